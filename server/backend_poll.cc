// poll: one thread, one poll(2) loop over every socket the server has.
//
// The model: the server keeps an array of pollfd, one per socket (the stop pipe, the TCP
// listener, the UDP socket, the idle timer, every connection), and hands the whole array to the
// kernel on every call. poll() sleeps until any of them is ready, marks the ready ones in place,
// and the thread walks the array to find them, then serves each without blocking. How a ready
// socket is served (accept under the limits, read, answer, queue, flush, UDP in batches, idle
// timeout, shutdown) is shared with epoll: server/readiness_shard.h.
//
// The trade-off against epoll: nothing is registered with the kernel, so there is no epoll_ctl()
// when a connection's interest changes (the new events are just written into the array), and no
// descriptor limit beyond RLIMIT_NOFILE (select's FD_SETSIZE does not apply). But every wait
// copies the whole array into the kernel, which polls each socket, and out again, and the thread
// then scans all of it: a wait costs time in proportion to the connections held, idle ones
// included, where epoll's costs in proportion to the ready ones. With a few busy connections that
// is nothing; with ten thousand idle ones it is most of the server's CPU. One thread: --shards
// does not apply.
//
// The array is kept dense: a closed connection's slot takes the last entry (swap-remove), and a
// table indexed by descriptor says where each one is, so closing costs O(1) and poll() never
// sees a hole.
//
// Kernel needs: poll(2), and what the shared reactor uses (recvmmsg/sendmmsg, timerfd).
// Try it: upcase-server --backend=poll 5050, then `nc 127.0.0.1 5050` in a few terminals and
// `nc -u 127.0.0.1 5050`; `strace -c -p <pid>` shows one poll per wake-up.
#include <poll.h>
#include <sys/epoll.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/net.h"
#include "server/backend.h"
#include "server/readiness_shard.h"
#include "server/sharded_backend.h"

namespace upcase {
namespace {

// The shared reactor speaks epoll's event bits; poll's are the same numbers.
static_assert(POLLIN == EPOLLIN && POLLOUT == EPOLLOUT && POLLERR == EPOLLERR &&
              POLLHUP == EPOLLHUP);

// One ready socket, noted before any is served: serving one may add or remove entries (accept,
// close), which moves others in the array.
struct Ready {
  int fd;
  Source source;
  std::uint32_t events;
};

class PollShard : public ReadinessShard {
 public:
  using ReadinessShard::ReadinessShard;

  // The loop: poll everything, scan everything for what is ready, serve it.
  absl::Status Run() override {
    while (serving()) {
      const int n = ::poll(fds_.data(), fds_.size(), TimeoutMs());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("poll", errno);
      }
      ready_.clear();
      for (std::size_t i = 0; i < fds_.size() && ready_.size() < static_cast<std::size_t>(n); ++i) {
        if (fds_[i].revents == 0) continue;
        if (fds_[i].revents & POLLNVAL) {  // a closed descriptor still in the array: a bug here
          return absl::InternalError(absl::StrCat("poll: descriptor ", fds_[i].fd, " not open"));
        }
        ready_.push_back({fds_[i].fd, sources_[i], static_cast<std::uint32_t>(fds_[i].revents)});
      }
      for (const Ready& r : ready_) {
        if (absl::Status s = Dispatch(r.source, r.fd, r.events); !s.ok()) return s;
      }
      if (absl::Status s = HandleTimers(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Watch(int fd, std::uint32_t events, Source source) override {
    if (static_cast<std::size_t>(fd) >= slot_.size()) slot_.resize(fd + 1, kNoSlot);
    slot_[fd] = fds_.size();
    fds_.push_back({fd, static_cast<short>(events), 0});
    sources_.push_back(source);
    return absl::OkStatus();
  }

  absl::Status Rewatch(int fd, std::uint32_t events, Source /*source*/) override {
    fds_[slot_[fd]].events = static_cast<short>(events);
    return absl::OkStatus();
  }

  // Swap-remove: the last entry takes the freed slot, so the array stays dense.
  absl::Status Unwatch(int fd, bool /*closing*/) override {
    const std::size_t i = slot_[fd];
    const std::size_t last = fds_.size() - 1;
    if (i != last) {
      fds_[i] = fds_[last];
      sources_[i] = sources_[last];
      slot_[fds_[i].fd] = i;
    }
    fds_.pop_back();
    sources_.pop_back();
    slot_[fd] = kNoSlot;
    return absl::OkStatus();
  }

  static constexpr std::size_t kNoSlot = SIZE_MAX;

  std::vector<pollfd> fds_;        // what poll() watches; dense
  std::vector<Source> sources_;    // sources_[i] is what fds_[i] is
  std::vector<std::size_t> slot_;  // by descriptor: its index in fds_, or kNoSlot
  std::vector<Ready> ready_;       // this wake-up's ready sockets, reused
};

}  // namespace

BackendInfo PollBackendInfo() {
  return {"poll",
          "readiness loop: one thread, poll(2) over a dense pollfd array",
          /*sharded=*/false,
          /*reactor=*/true,
          [] { return absl::OkStatus(); },
          &OneShardBackend<PollShard>};
}

}  // namespace upcase
