// iterative: the lab's server. One client at a time, blocking calls.
//
// The model: accept() one connection, serve it (recv, uppercase, send) until the client closes,
// then accept() the next. Clients that connect meanwhile wait in the kernel's listen backlog, so
// one idle or slow client stops service for everyone: that is the lesson of this backend, and the
// reason the other three exist. UDP has no connections, so its loop (recvfrom, uppercase, sendto)
// never waits on one client; it runs on its own thread, as the lab's second server would.
//
// Cost per request: one recv and one send (two syscalls), no context switch when the client is
// the only one. Kernel needs: nothing beyond BSD sockets.
// Try it: upcase-server --backend=iterative 5050, then two `upcase-client tcp 127.0.0.1 5050`:
// the second gets no answer until the first ends.
#include <sys/socket.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "server/backend.h"
#include "server/blocking_io.h"
#include "server/listeners.h"

namespace upcase {
namespace {

class IterativeBackend : public Backend {
 public:
  explicit IterativeBackend(const ServerConfig& config) : config_(config) {}

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
    if (udp_thread.joinable()) udp_thread.join();
    grace_.Cancel();
    return status;
  }

  void Stop() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_.Raise(config_.grace)) return;
    // shutdown(SHUT_RD) wakes threads blocked in accept/recv/recvfrom on these sockets. The
    // client connection then answers what it had received and ends without losing output (see
    // blocking_io.h); connections still in the listen backlog were never accepted and are reset.
    for (const Fd& fd : listeners_.tcp) ::shutdown(fd.get(), SHUT_RD);
    for (const Fd& fd : listeners_.udp) ::shutdown(fd.get(), SHUT_RD);
    if (current_ >= 0) ::shutdown(current_, SHUT_RD);
    grace_.Arm(config_.grace, [this] {
      std::lock_guard<std::mutex> expired_lock(mu_);
      if (current_ >= 0) ::shutdown(current_, SHUT_RDWR);  // a client that never reads
    });
  }

  std::vector<ShardStats> Stats() const override {
    ShardStats total = tcp_stats_;
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
        if (HandleAcceptError(errno, tcp_stats_)) continue;
        return ErrnoError("accept", errno);
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_.raised()) return absl::OkStatus();
        current_ = conn.get();
      }
      ++tcp_stats_.accepted;
      ServeBlockingConnection(conn.get(), stop_, tcp_stats_);
      ++tcp_stats_.closed;
      std::lock_guard<std::mutex> lock(mu_);  // Stop() must not shut down a reused fd number
      current_ = -1;
      conn.reset();
    }
  }

  const ServerConfig config_;
  Listeners listeners_;
  StopFlag stop_;
  std::mutex mu_;
  int current_ = -1;  // guarded by mu_: the connection being served, or -1
  GraceTimer grace_;
  ShardStats tcp_stats_;  // owned by the accept loop
  ShardStats udp_stats_;  // owned by the UDP thread
};

}  // namespace

BackendInfo IterativeBackendInfo() {
  return {"iterative", "the lab's server: one client at a time, blocking calls",
          /*sharded=*/false, [] { return absl::OkStatus(); },
          [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<IterativeBackend>(c);
          }};
}

}  // namespace upcase
