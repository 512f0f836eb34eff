// The I/O-model interface every backend implements, and the run-time registry that picks one by
// name. A backend is one file (backend_<name>.cc) of private state behind this interface; the
// rest of the server never knows which kernel API runs below it.
//
// Life cycle, driven by main.cc:
//   Open()  binds every listener, returns the bound endpoints (then main prints "ready ...");
//   Run()   serves on the calling thread (plus the backend's own threads) until Stop();
//   Stop()  from another thread: stop accepting, deliver output already produced within
//           config.grace, close everything; Run() then returns;
//   Stats() per-shard counters, read after Run() has returned.
#ifndef UPCASE_SERVER_BACKEND_H_
#define UPCASE_SERVER_BACKEND_H_

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/net.h"
#include "server/config.h"
#include "server/stats.h"

namespace upcase {

struct Endpoints {
  std::optional<SocketAddress> tcp;  // absent when TCP is not served
  std::optional<SocketAddress> udp;
  // The receive buffer the kernel granted each UDP socket (SetUdpReceiveBuffer); 0 without UDP.
  std::size_t udp_rcvbuf = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // Creates and binds every socket the backend serves on; nothing is served yet.
  virtual absl::StatusOr<Endpoints> Open() = 0;
  // Serves until Stop() has been called and shutdown has finished. Returns an error only when
  // serving could not continue (the message names the call that failed).
  virtual absl::Status Run() = 0;
  // Begins graceful shutdown. Thread-safe and idempotent; returns at once.
  virtual void Stop() = 0;
  // One entry per shard (blocking backends report one). Valid after Run() returned.
  virtual std::vector<ShardStats> Stats() const = 0;
};

struct BackendInfo {
  absl::string_view name;
  absl::string_view summary;  // one line for --help
  bool sharded;               // honours --shards and --pin
  // One thread serves many connections from a readiness or completion loop (epoll, uring, poll,
  // select): it queues each connection's unsent output (--conn-buffer, --output-budget) and ends
  // its connections in that loop at shutdown. False for the blocking backends.
  bool reactor;
  // OK when this build and kernel can run the backend; otherwise says why not.
  absl::Status (*available)();
  std::unique_ptr<Backend> (*create)(const ServerConfig& config);
};

// Every compiled-in backend, in registry order.
const std::vector<BackendInfo>& Backends();

// The backend named `name`: NotFound for an unknown name, and the backend's own availability
// error when it cannot run here.
absl::StatusOr<const BackendInfo*> FindBackend(absl::string_view name);

// The default: the first available of uring, epoll, threads. When a preferred backend is
// unavailable, `notice` receives one line saying which was skipped and why.
const BackendInfo& DefaultBackend(std::string* notice);

}  // namespace upcase

#endif  // UPCASE_SERVER_BACKEND_H_
