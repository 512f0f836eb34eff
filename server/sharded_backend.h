// What the two multi-reactor backends (epoll, uring) share: N shards, each one thread with its
// own TCP listener and UDP socket on the same port (SO_REUSEPORT, so the kernel spreads
// connections and datagrams across them), started, stopped and counted the same way. A backend
// only says how one shard serves (ReactorShard); ShardedBackend does the rest:
//
//   Open()   binds every shard's sockets and creates the shards (CreateShard);
//   Run()    runs shard 0 on the calling thread and the others on threads of their own, each
//            pinned to its CPU with --pin;
//   Stop()   makes the one stop pipe readable; every shard watches it and shuts down;
//   Stats()  one entry per shard.
#ifndef UPCASE_SERVER_SHARDED_BACKEND_H_
#define UPCASE_SERVER_SHARDED_BACKEND_H_

#include <sys/socket.h>

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/net.h"
#include "server/backend.h"
#include "server/config.h"
#include "server/limits.h"
#include "server/output_queue.h"
#include "server/stats.h"

namespace upcase {

// One reactor: a thread's whole world. Created by Open(), run on its own thread, read after. The
// state every reactor has is here; a backend's shard adds its kernel interface and connections.
class ReactorShard {
 public:
  ReactorShard(const ServerConfig& config, std::size_t max_conns, int stop_fd,
               ConnsPerAddress* per_address)
      : config_(config),
        max_conns_(max_conns),
        stop_fd_(stop_fd),
        per_address_(*per_address),
        idle_(config.idle_timeout),
        output_pool_(config.conn_buffer, config.output_budget) {}
  virtual ~ReactorShard() = default;
  ReactorShard(const ReactorShard&) = delete;
  ReactorShard& operator=(const ReactorShard&) = delete;

  // The event loop: returns once shutdown has finished, or with an error when serving cannot go
  // on (the message names the call that failed).
  virtual absl::Status Run() = 0;
  virtual ShardStats stats() const { return stats_; }

 protected:
  // Whether a connection accepted from `address` (null: asked of its socket `fd`) may be served
  // while `open` others are: counts what --max-conns and --max-conns-per-ip turn away, and the
  // caller then closes `fd` at once (its client sees an immediate close). When admitted, `*peer`
  // holds a slot in the per-address table until per_address_.Release(*peer).
  bool AdmitPeer(int fd, std::size_t open, const sockaddr* address, PeerKey* peer);

  const ServerConfig& config_;
  const std::size_t max_conns_;   // this shard's share of --max-conns
  const int stop_fd_;             // the stop pipe's read end; readable once Stop() was called
  ConnsPerAddress& per_address_;  // --max-conns-per-ip: shared by every shard (thread-safe)
  IdleClock idle_;                // --idle-timeout: advanced by the shard's own timer
  // Storage for the connections' output queues. A base member, so it outlives the connections.
  OutputPool output_pool_;
  ShardStats stats_;  // read by stats() once Run() has returned
};

// What Open() hands each new shard.
struct ShardSetup {
  int index = 0;
  Fd tcp;  // the shard's listener; invalid when TCP is not served
  Fd udp;  // the shard's UDP socket; invalid when UDP is not served
  // This shard's share of --max-conns, so shards need no shared counter: ceil(max / shards). The
  // server as a whole may therefore admit up to shards - 1 connections more than max.
  std::size_t max_conns = 0;
  // Readable once Stop() was called, and from then on (never read: every shard sees it).
  int stop_fd = -1;
  // --max-conns-per-ip, one table for all shards; owned by the backend.
  ConnsPerAddress* per_address = nullptr;
};

class ShardedBackend : public Backend {
 public:
  explicit ShardedBackend(const ServerConfig& config)
      : config_(config), per_address_(config.max_conns_per_ip, config.per_ip_prefix) {}

  absl::StatusOr<Endpoints> Open() final;
  absl::Status Run() final;
  void Stop() final;
  std::vector<ShardStats> Stats() const final;

 protected:
  // Creates shard `setup.index` with its sockets; resource problems are reported here, before the
  // ready line.
  virtual absl::StatusOr<std::unique_ptr<ReactorShard>> CreateShard(ShardSetup setup) = 0;

  const ServerConfig& config() const { return config_; }

 private:
  const ServerConfig config_;
  ConnsPerAddress per_address_;  // shared by the shards; outlives them
  // A pipe rather than an eventfd: the same readiness to every poller, and a pipe can also raise
  // a signal when written (O_ASYNC), which is how the sigio backend hears of the stop.
  Fd stop_;                // read end: never read, so it stays readable and every shard sees it
  Fd stop_write_;          // Stop() writes one byte here
  std::vector<int> cpus_;  // --pin: shard i runs on cpus_[i % size]
  std::vector<std::unique_ptr<ReactorShard>> shards_;  // fixed once Open() returned
};

// The ShardedBackend of a backend whose shard class is `Shard`: constructed with
// (config, max_conns, stop_fd, per_address), then Init(tcp, udp) in Open().
template <typename Shard>
class ShardedBackendOf final : public ShardedBackend {
 public:
  using ShardedBackend::ShardedBackend;

 private:
  absl::StatusOr<std::unique_ptr<ReactorShard>> CreateShard(ShardSetup setup) override {
    auto shard =
        std::make_unique<Shard>(config(), setup.max_conns, setup.stop_fd, setup.per_address);
    if (absl::Status s = shard->Init(std::move(setup.tcp), std::move(setup.udp)); !s.ok()) return s;
    return shard;
  }
};

// The create() of a one-thread readiness backend (poll, select, sigio): one shard, whatever
// --shards and --pin say.
template <typename Shard>
std::unique_ptr<Backend> OneShardBackend(const ServerConfig& config) {
  ServerConfig one = config;
  one.shards = 1;
  one.pin = false;
  return std::make_unique<ShardedBackendOf<Shard>>(one);
}

// The CPUs this process may run on (AllowedCpus, common/sys.h), in increasing order: what --pin
// spreads the shards over, and how many shards run by default. Never empty.
std::vector<int> ShardCpus();

}  // namespace upcase

#endif  // UPCASE_SERVER_SHARDED_BACKEND_H_
