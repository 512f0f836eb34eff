// threads: the lab's "concurrent server". One blocking thread per TCP connection.
//
// The model: the acceptor thread blocks in accept(); every connection gets its own thread that
// runs the iterative server's loop (recv, uppercase, send) with blocking calls. A slow client now
// costs only its own thread, at the price of one thread (stack, scheduler entry) per connection
// and a context switch whenever the kernel wakes a different connection's thread. UDP is served by
// one blocking thread, as in the lab.
//
// Kernel needs: nothing beyond BSD sockets and threads.
// Try it: upcase-server --backend=threads 5050, connect several clients, and watch
// `grep Threads /proc/$(pidof upcase-server)/status` grow with them.
#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_set>

#include "server/backend.h"
#include "server/blocking_io.h"
#include "server/listeners.h"

namespace upcase {
namespace {

class ThreadsBackend : public Backend {
 public:
  explicit ThreadsBackend(const ServerConfig& config) : config_(config) {}

  absl::StatusOr<Endpoints> Open() override {
    absl::StatusOr<Listeners> listeners = OpenListeners(config_, 1, /*non_blocking=*/false);
    if (!listeners.ok()) return listeners.status();
    listeners_ = *std::move(listeners);
    return listeners_.endpoints;
  }

  absl::Status Run() override {
    std::thread udp_thread;
    if (!listeners_.udp.empty()) {
      udp_thread =
          std::thread([this] { ServeBlockingUdp(listeners_.udp[0].get(), stop_, udp_stats_); });
    }
    absl::Status status = listeners_.tcp.empty() ? absl::OkStatus() : AcceptLoop();
    if (!status.ok()) Stop();  // the listener failed: wind the connections down as for a signal
    {
      // Connection threads are detached; wait for the last one to sign off.
      std::unique_lock<std::mutex> lock(mu_);
      drained_.wait(lock, [this] { return conns_.empty(); });
    }
    if (udp_thread.joinable()) udp_thread.join();
    grace_.Cancel();
    return status;
  }

  void Stop() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_.Raise(config_.grace)) return;
    // See the iterative backend: shutdown(SHUT_RD) wakes blocked calls; each connection thread
    // then answers what it had received and ends without losing output (see blocking_io.h).
    for (const Fd& fd : listeners_.tcp) ::shutdown(fd.get(), SHUT_RD);
    for (const Fd& fd : listeners_.udp) ::shutdown(fd.get(), SHUT_RD);
    for (int fd : conns_) ::shutdown(fd, SHUT_RD);
    grace_.Arm(config_.grace, [this] {
      std::lock_guard<std::mutex> expired_lock(mu_);
      for (int fd : conns_) ::shutdown(fd, SHUT_RDWR);  // clients that never read
    });
  }

  std::vector<ShardStats> Stats() const override {
    ShardStats total = acceptor_stats_;
    total += conn_stats_;
    total += udp_stats_;
    return {total};
  }

 private:
  absl::Status AcceptLoop() {
    const int listen_fd = listeners_.tcp[0].get();
    while (true) {
      Fd conn(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
      if (!conn.valid()) {
        if (stop_.raised()) return absl::OkStatus();
        if (HandleAcceptError(errno, acceptor_stats_)) continue;
        return ErrnoError("accept", errno);
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_.raised()) return absl::OkStatus();
      if (conns_.size() >= config_.max_conns) {
        ++acceptor_stats_.rejected;  // conn closes as it goes out of scope
        continue;
      }
      const int fd = conn.get();
      try {
        std::thread([this, fd] { ConnectionThread(fd); }).detach();
      } catch (const std::system_error&) {
        ++acceptor_stats_.accept_errors;  // out of threads: refuse this one, keep serving
        continue;
      }
      conns_.insert(conn.release());
      ++acceptor_stats_.accepted;
    }
  }

  void ConnectionThread(int fd) {
    ShardStats stats;
    ServeBlockingConnection(fd, stop_, stats);
    std::lock_guard<std::mutex> lock(mu_);
    ++stats.closed;
    conn_stats_ += stats;
    conns_.erase(fd);
    ::close(fd);  // under mu_, so Stop() never shuts down a reused descriptor number
    drained_.notify_all();
  }

  const ServerConfig config_;
  Listeners listeners_;
  StopFlag stop_;
  std::mutex mu_;
  std::condition_variable drained_;  // signalled when a connection thread ends
  std::unordered_set<int> conns_;    // guarded by mu_: descriptors of live connection threads
  ShardStats acceptor_stats_;        // owned by the accept loop
  ShardStats conn_stats_;            // guarded by mu_: summed as connection threads end
  ShardStats udp_stats_;             // owned by the UDP thread
  GraceTimer grace_;
};

}  // namespace

BackendInfo ThreadsBackendInfo() {
  return {"threads", "the lab's concurrent server: one blocking thread per connection",
          /*sharded=*/false, [] { return absl::OkStatus(); },
          [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<ThreadsBackend>(c);
          }};
}

}  // namespace upcase
