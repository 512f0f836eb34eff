#include "server/sharded_backend.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/sys.h"
#include "server/listeners.h"

namespace upcase {

bool ReactorShard::AdmitPeer(int fd, std::size_t open, const sockaddr* address, PeerKey* peer) {
  *peer = {};
  if (open >= max_conns_) {
    ++stats_.rejected;
    return false;
  }
  if (!per_address_.enabled()) return true;
  sockaddr_storage asked;
  if (address == nullptr) {
    socklen_t len = sizeof asked;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&asked), &len) != 0) {
      ++stats_.accept_errors;  // ENOTCONN: the client reset it already
      return false;
    }
    address = reinterpret_cast<const sockaddr*>(&asked);
  }
  *peer = per_address_.KeyOf(address);
  if (!per_address_.Admit(*peer)) {
    ++stats_.per_ip_refused;
    return false;
  }
  return true;
}

namespace {

// Runs run_shard(i) for every i in [0, count): shard 0 on the calling thread (so --shards=1 runs
// no extra thread), the others on threads of their own. When a shard fails, or its thread cannot
// be started, stop() is called so the other shards wind down as for a signal. Returns after every
// shard has returned: the first error, or OK.
absl::Status RunShards(std::size_t count, const std::function<absl::Status(std::size_t)>& run_shard,
                       const std::function<void()>& stop) {
  std::vector<absl::Status> results(count);
  auto run = [&](std::size_t i) {
    results[i] = run_shard(i);
    if (!results[i].ok()) stop();
  };
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < count; ++i) {
    try {
      threads.emplace_back(run, i);
    } catch (const std::system_error& e) {
      results[i] = absl::ResourceExhaustedError(
          absl::StrCat("cannot start thread for shard ", i, ": ", e.what()));
      stop();
      break;
    }
  }
  if (count > 0) run(0);
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : results) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Endpoints> ShardedBackend::Open() {
  int stop_pipe[2];
  if (::pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return ErrnoError("pipe2 (stop)", errno);
  stop_.reset(stop_pipe[0]);
  stop_write_.reset(stop_pipe[1]);
  cpus_ = ShardCpus();
  const int count = std::max(config_.shards, 1);
  absl::StatusOr<Listeners> listeners = OpenListeners(config_, count, /*non_blocking=*/true);
  if (!listeners.ok()) return listeners.status();
  // Accepted sockets inherit the listener's send buffer size (see SendBufferCap).
  if (const int sndbuf = SendBufferCap(config_.output_budget, TcpWmemMax()); sndbuf != 0) {
    for (const Fd& fd : listeners->tcp) {
      if (::setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) != 0) {
        return ErrnoError("setsockopt SO_SNDBUF", errno);
      }
    }
  }
  for (int i = 0; i < count; ++i) {
    ShardSetup setup;
    setup.index = i;
    if (!listeners->tcp.empty()) setup.tcp = std::move(listeners->tcp[i]);
    if (!listeners->udp.empty()) setup.udp = std::move(listeners->udp[i]);
    setup.max_conns = (config_.max_conns + count - 1) / count;
    setup.stop_fd = stop_.get();
    setup.per_address = &per_address_;
    absl::StatusOr<std::unique_ptr<ReactorShard>> shard = CreateShard(std::move(setup));
    if (!shard.ok()) return shard.status();
    shards_.push_back(*std::move(shard));
  }
  return listeners->endpoints;
}

absl::Status ShardedBackend::Run() {
  return RunShards(
      shards_.size(),
      [this](std::size_t i) {
        if (config_.pin) {
          if (absl::Status s = PinCurrentThread(cpus_[i % cpus_.size()]); !s.ok()) return s;
        }
        return shards_[i]->Run();
      },
      [this] { Stop(); });
}

void ShardedBackend::Stop() {
  if (!stop_write_.valid()) return;
  // One pipe for all shards: nobody reads it, so it stays readable and every shard sees it.
  const char byte = 1;
  // Cannot fail: the descriptors live as long as the backend, and EAGAIN (a pipe full of earlier
  // stops) leaves it readable all the same. A failure would leave the shards running forever, so
  // do not go on.
  if (::write(stop_write_.get(), &byte, 1) != 1 && errno != EAGAIN) std::abort();
}

std::vector<ShardStats> ShardedBackend::Stats() const {
  std::vector<ShardStats> out;
  for (const std::unique_ptr<ReactorShard>& shard : shards_) out.push_back(shard->stats());
  return out;
}

std::vector<int> ShardCpus() {
  absl::StatusOr<std::vector<int>> allowed = AllowedCpus();
  if (allowed.ok() && !allowed->empty()) return *std::move(allowed);
  // sched_getaffinity fails only for a CPU set larger than CPU_SETSIZE (1024 CPUs): then every
  // online CPU.
  std::vector<int> cpus;
  for (int cpu = 0; cpu < OnlineCpus(); ++cpu) cpus.push_back(cpu);
  return cpus;
}

}  // namespace upcase
