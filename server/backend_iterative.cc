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

class IterativeBackend : public BlockingBackend {
 public:
  using BlockingBackend::BlockingBackend;

 private:
  // Serves the connection right here, on the accept loop's thread: the next accept() happens only
  // when this client has gone.
  bool Serve(Fd conn, const PeerKey& peer) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_.raised()) return false;
      current_ = conn.get();
    }
    ++tcp_stats_.accepted;
    ServeBlockingConnection(conn.get(), stop_, config_.idle_timeout, tcp_stats_);
    ++tcp_stats_.closed;
    per_address_.Release(peer);
    std::lock_guard<std::mutex> lock(mu_);  // Stop() must not shut down a reused fd number
    current_ = -1;
    conn.reset();
    return true;
  }

  void ShutdownConnections(int how) override {
    if (current_ >= 0) ShutdownForStop(current_, how, "connection");
  }

  int current_ = -1;  // guarded by mu_: the connection being served, or -1
};

}  // namespace

BackendInfo IterativeBackendInfo() {
  return {"iterative",
          "the lab's server: one client at a time, blocking calls",
          /*sharded=*/false,
          /*reactor=*/false,
          [] { return absl::OkStatus(); },
          [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<IterativeBackend>(c);
          }};
}

}  // namespace upcase
