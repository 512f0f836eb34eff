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

class ThreadsBackend : public BlockingBackend {
 public:
  using BlockingBackend::BlockingBackend;

 private:
  // Hands the connection to a thread of its own, and goes back to accept() at once.
  bool Serve(Fd conn, const PeerKey& peer) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_.raised()) return false;
    if (conns_.size() >= config_.max_conns) {
      ++tcp_stats_.rejected;  // conn closes as it goes out of scope
      per_address_.Release(peer);
      return true;
    }
    const int fd = conn.get();
    try {
      std::thread([this, fd, peer] { ConnectionThread(fd, peer); }).detach();
    } catch (const std::system_error&) {
      ++tcp_stats_.accept_errors;  // out of threads: refuse this one, keep serving
      per_address_.Release(peer);
      return true;
    }
    conns_.insert(conn.release());
    ++tcp_stats_.accepted;
    return true;
  }

  void ConnectionThread(int fd, PeerKey peer) {
    ShardStats stats;
    ServeBlockingConnection(fd, stop_, config_.idle_timeout, stats);
    per_address_.Release(peer);
    std::lock_guard<std::mutex> lock(mu_);
    ++stats.closed;
    conn_stats_ += stats;
    conns_.erase(fd);
    ::close(fd);  // under mu_, so Stop() never shuts down a reused descriptor number
    drained_.notify_all();
  }

  void ShutdownConnections(int how) override {
    for (int fd : conns_) ShutdownForStop(fd, how, "connection");
  }

  // Connection threads are detached; waits for the last one to sign off.
  void WaitForConnections() override {
    std::unique_lock<std::mutex> lock(mu_);
    drained_.wait(lock, [this] { return conns_.empty(); });
  }

  std::condition_variable drained_;  // signalled when a connection thread ends
  std::unordered_set<int> conns_;    // guarded by mu_: descriptors of live connection threads
};

}  // namespace

BackendInfo ThreadsBackendInfo() {
  return {"threads",
          "the lab's concurrent server: one blocking thread per connection",
          /*sharded=*/false,
          /*reactor=*/false,
          [] { return absl::OkStatus(); },
          [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<ThreadsBackend>(c);
          }};
}

}  // namespace upcase
