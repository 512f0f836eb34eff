// select: one thread, one select(2) loop: the multiplexing server of every systems course.
//
// The model: the server keeps two descriptor bitmaps, the sockets it wants to read and the ones
// it wants to write. select() overwrites the sets it is given with the ready ones, so every wait
// starts from a copy of them; the kernel checks each descriptor up to the highest one watched,
// and the thread then tests each bit to find the ready sockets and serves each without blocking.
// How a ready socket is served (accept under the limits, read, answer, queue, flush, UDP in
// batches, idle timeout, shutdown) is shared with epoll and poll: server/readiness_shard.h.
//
// The trade-off: like poll, a wait costs time in proportion to the descriptors held (up to the
// highest number), idle ones included, where epoll's costs in proportion to the ready ones. And
// an fd_set is a fixed bitmap of FD_SETSIZE (1024) bits: a descriptor numbered 1024 or above
// cannot be put in one at all (FD_SET on it writes past the bitmap: undefined behaviour). So this
// server refuses such a connection when it accepts it, closing it at once and counting it in
// fd_setsize_refused, whatever --max-conns says: with the few descriptors a server holds for
// itself, it serves about 1010 clients at most. One thread: --shards does not apply.
//
// Kernel needs: select(2), and what the shared reactor uses (recvmmsg/sendmmsg, timerfd).
// Try it: upcase-server --backend=select 5050, then `nc 127.0.0.1 5050` in a few terminals and
// `nc -u 127.0.0.1 5050`; the 1014th client or so is closed at once (fd_setsize_refused at exit).
#include <sys/epoll.h>
#include <sys/select.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/net.h"
#include "server/backend.h"
#include "server/readiness_shard.h"
#include "server/sharded_backend.h"

namespace upcase {
namespace {

class SelectShard : public ReadinessShard {
 public:
  using ReadinessShard::ReadinessShard;

  // The loop: copy the sets, select, test every bit up to the highest descriptor, serve.
  absl::Status Run() override {
    while (serving()) {
      fd_set readable = want_read_;
      fd_set writable = want_write_;
      const int ms = TimeoutMs();
      timeval timeout{ms / 1000, (ms % 1000) * 1000};
      const int highest = max_fd_;
      const int n =
          ::select(highest + 1, &readable, &writable, nullptr, ms < 0 ? nullptr : &timeout);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("select", errno);
      }
      // Serving a socket may close others or accept new ones; a descriptor closed, or closed and
      // reused, since select() returned costs at most a read that says EAGAIN (readiness_shard.h).
      int left = n;
      for (int fd = 0; fd <= highest && left > 0; ++fd) {
        std::uint32_t events = 0;
        if (FD_ISSET(fd, &readable)) events |= EPOLLIN;
        if (FD_ISSET(fd, &writable)) events |= EPOLLOUT;
        if (events == 0) continue;
        left -= (events & EPOLLIN ? 1 : 0) + (events & EPOLLOUT ? 1 : 0);
        if (!watched_[fd]) continue;
        if (absl::Status s = Dispatch(sources_[fd], fd, events); !s.ok()) return s;
      }
      if (absl::Status s = HandleTimers(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  // The server's own sockets are opened first, so they are far below FD_SETSIZE; a connection
  // at or above it never gets here (Watchable).
  absl::Status Watch(int fd, std::uint32_t events, Source source) override {
    if (fd >= FD_SETSIZE) {
      return absl::ResourceExhaustedError(
          absl::StrCat("select: descriptor ", fd, " is at or above FD_SETSIZE (", FD_SETSIZE, ")"));
    }
    watched_.set(fd);
    sources_[fd] = source;
    max_fd_ = std::max(max_fd_, fd);
    return Rewatch(fd, events, source);
  }

  absl::Status Rewatch(int fd, std::uint32_t events, Source /*source*/) override {
    if (events & EPOLLIN) {
      FD_SET(fd, &want_read_);
    } else {
      FD_CLR(fd, &want_read_);
    }
    if (events & EPOLLOUT) {
      FD_SET(fd, &want_write_);
    } else {
      FD_CLR(fd, &want_write_);
    }
    return absl::OkStatus();
  }

  absl::Status Unwatch(int fd, bool /*closing*/) override {
    FD_CLR(fd, &want_read_);
    FD_CLR(fd, &want_write_);
    watched_.reset(fd);
    while (max_fd_ >= 0 && !watched_[max_fd_]) --max_fd_;
    return absl::OkStatus();
  }

  // The FD_SETSIZE limit, checked before the connection is admitted: closed at once and counted.
  bool Watchable(int fd) override {
    if (fd < FD_SETSIZE) return true;
    ++stats_.fd_setsize_refused;
    return false;
  }

  fd_set want_read_{};                        // watched for reading; select() gets a copy
  fd_set want_write_{};                       // watched for writing (output pending); likewise
  std::bitset<FD_SETSIZE> watched_;           // in either set or none: watched_[fd] iff it is ours
  std::array<Source, FD_SETSIZE> sources_{};  // what each watched descriptor is
  int max_fd_ = -1;  // the highest watched descriptor; select() looks up to it
};

}  // namespace

BackendInfo SelectBackendInfo() {
  return {"select",
          "readiness loop: one thread, select(2); refuses descriptors >= FD_SETSIZE",
          /*sharded=*/false,
          /*reactor=*/true,
          [] { return absl::OkStatus(); },
          &OneShardBackend<SelectShard>};
}

}  // namespace upcase
