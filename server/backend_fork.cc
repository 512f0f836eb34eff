// fork: the lab's classic concurrent server (CS:APP's echoserverp.c, UNIX Network Programming §5):
// one process per TCP connection.
//
// The model: the parent blocks in accept(); for each connection it fork()s, and the child runs
// the iterative server's loop (recv, uppercase, send, blocking calls) on that one connection and
// exits. The parent goes straight back to accept(), and a reaper thread collects each child as it
// ends (waitid), so none stays a zombie. A slow or crashing client costs only its own process.
// The price: a fork() per connection (the parent's page tables copied), a process per connection
// (its memory, a scheduler entry), and a switch of address space whenever the kernel runs a
// different connection. UDP has no connections: the parent answers it on a thread of its own, as
// the other blocking backends do (server/blocking_io.h), and --max-conns bounds the children.
//
// Two departures from the textbook, both for the shutdown every backend follows
// (server/shutdown.h). The textbook parent closes its copy of the connection at once; this one
// keeps it until the child is reaped, so that Stop() can wake a child blocked in recv() with
// shutdown(), as the threads backend wakes its threads (a child closes every descriptor but its
// own connection, so no child holds another's socket open). And what parent and children must
// both see lives in memory they share (MAP_SHARED): the stop flag, and one slot of counters per
// child, which the parent adds up when it reaps the child, so the counters at exit add up as the
// other backends' do. A child dies with the parent (PR_SET_PDEATHSIG): none is orphaned.
//
// Fork safety: the parent has other threads (the one waiting for SIGTERM, UDP, the reaper), and
// the child gets a copy of their memory without them, locks held included. So the child touches
// nothing another thread might hold: between fork() and its loop it makes only system calls, and
// the loop (ServeBlockingConnection) uses the connection, its stack, the shared page and, on an
// error path only, malloc (whose locks glibc's fork() takes and releases around the copy) and
// stderr. It ends with _exit(), running no destructor and flushing no inherited stdio buffer.
// (ThreadSanitizer stops checking the child of a multithreaded process; the loop the child runs is
// the threads backend's, which it does check.)
//
// Kernel needs: fork, waitid, prctl(PR_SET_PDEATHSIG), close_range (Linux 5.9), BSD sockets.
// Try it: upcase-server --backend=fork 5050, connect a few `nc 127.0.0.1 5050`, and
// `ps -o pid,rss,cmd --ppid <the server's pid>` lists one process per connection.
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "server/backend.h"
#include "server/blocking_io.h"

namespace upcase {
namespace {

// What parent and children share: the stop flag, then one ShardStats per child that may run at
// once (--max-conns). A child writes only its own slot; the parent reads it after reaping the
// child. MAP_NORESERVE: pages are committed as slots are touched.
class SharedPage {
 public:
  SharedPage() = default;
  SharedPage(const SharedPage&) = delete;
  SharedPage& operator=(const SharedPage&) = delete;
  ~SharedPage() {
    if (base_ != nullptr) ::munmap(base_, size_);
  }

  absl::Status Map(std::size_t slots) {
    size_ = kSlotsOffset + slots * sizeof(ShardStats);
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return ErrnoError("mmap (counters shared with the children)", errno);
    base_ = p;
    stop_ = new (base_) StopFlag();  // lock-free atomics work across processes
    return absl::OkStatus();
  }

  StopFlag& stop() { return *stop_; }
  ShardStats& slot(std::size_t i) {
    return *std::launder(reinterpret_cast<ShardStats*>(static_cast<char*>(base_) + kSlotsOffset +
                                                       i * sizeof(ShardStats)));
  }

 private:
  static constexpr std::size_t kSlotsOffset = 64;  // StopFlag first, on a cache line of its own
  static_assert(sizeof(StopFlag) <= kSlotsOffset && alignof(ShardStats) <= kSlotsOffset);

  void* base_ = nullptr;
  std::size_t size_ = 0;
  StopFlag* stop_ = nullptr;
};

class ForkBackend : public BlockingBackend {
 public:
  using BlockingBackend::BlockingBackend;

  ~ForkBackend() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      accepting_ = false;
    }
    changed_.notify_all();
    if (reaper_.joinable()) reaper_.join();
  }

  absl::StatusOr<Endpoints> Open() override {
    parent_ = ::getpid();
    if (absl::Status s = shared_.Map(config_.max_conns); !s.ok()) return s;
    return BlockingBackend::Open();
  }

 private:
  // One child: its process, the parent's copy of its connection, its counters' slot.
  struct Child {
    int fd;
    std::size_t slot;
    PeerKey peer;
  };

  // The parent: fork a child to serve the connection, and go back to accept() at once.
  bool Serve(Fd conn, const PeerKey& peer) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_.raised()) return false;
    if (children_.size() >= config_.max_conns) {
      ++tcp_stats_.rejected;  // conn closes as it goes out of scope
      per_address_.Release(peer);
      return true;
    }
    if (!reaper_.joinable()) {
      try {
        reaper_ = std::thread([this] { ReapChildren(); });
      } catch (const std::system_error&) {
        ++tcp_stats_.accept_errors;  // out of threads: refuse this one, try again with the next
        per_address_.Release(peer);
        return true;
      }
    }
    std::size_t slot = next_slot_;
    if (free_slots_.empty()) {
      ++next_slot_;
    } else {
      slot = free_slots_.back();
      free_slots_.pop_back();
    }
    ShardStats& stats = shared_.slot(slot);
    stats = ShardStats{};
    const pid_t pid = ::fork();  // mu_ held: the reaper cannot see the child before children_ does
    if (pid == 0) ServeInChild(conn.get(), stats);
    if (pid < 0) {
      ++tcp_stats_.accept_errors;  // EAGAIN (RLIMIT_NPROC) or ENOMEM: refuse this one
      free_slots_.push_back(slot);
      per_address_.Release(peer);
      return true;
    }
    children_.emplace(pid, Child{conn.release(), slot, peer});
    ++tcp_stats_.accepted;
    changed_.notify_all();
    return true;
  }

  // The child: only system calls until the loop (see "Fork safety"), and _exit() at the end.
  [[noreturn]] void ServeInChild(int fd, ShardStats& stats) {
    // The parent may have died before the death signal was asked for: then nobody waits for us.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent_) ::_exit(1);
    // The listener, the other connections, the parent's pipes and timers: none is ours. A child
    // holding another connection's socket would keep it open after that one's child closed it.
    if ((fd > 3 && ::close_range(3, fd - 1, 0) != 0) || ::close_range(fd + 1, ~0U, 0) != 0) {
      constexpr char kMessage[] = "upcase-server: fork child: close_range failed\n";
      if (::write(STDERR_FILENO, kMessage, sizeof kMessage - 1) < 0) ::_exit(1);
      ::_exit(1);
    }
    ServeBlockingConnection(fd, shared_.stop(), config_.idle_timeout, stats);
    ::_exit(0);
  }

  // The reaper thread: waits for any child to end, then adds up its counters, frees its slot and
  // closes the parent's copy of its connection (whose client then sees the end). Returns once
  // the accept loop is over and every child has been reaped.
  void ReapChildren() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      changed_.wait(lock, [this] { return !children_.empty() || !accepting_; });
      if (children_.empty()) return;
      lock.unlock();
      siginfo_t info{};
      const int rc = ::waitid(P_ALL, 0, &info, WEXITED);
      const int err = errno;
      lock.lock();
      if (rc != 0) {
        if (err == EINTR) continue;
        // ECHILD: someone else reaped them (SIGCHLD set to SIG_IGN): their counters are final.
        std::fprintf(stderr, "upcase-server: waitid: %s\n", std::strerror(err));
        while (!children_.empty()) Reaped(children_.begin());
        continue;
      }
      auto it = children_.find(info.si_pid);
      if (it == children_.end()) continue;  // not a connection's process
      if (info.si_code != CLD_EXITED) {
        std::fprintf(stderr, "upcase-server: connection process %d killed by signal %d\n",
                     static_cast<int>(info.si_pid), info.si_status);
      }
      Reaped(it);
    }
  }

  // Under mu_: the child is gone.
  void Reaped(absl::flat_hash_map<pid_t, Child>::iterator it) {
    const Child& child = it->second;
    conn_stats_ += shared_.slot(child.slot);
    ++conn_stats_.closed;
    per_address_.Release(child.peer);
    ::close(child.fd);  // under mu_, so Stop() never shuts down a reused descriptor number
    free_slots_.push_back(child.slot);
    children_.erase(it);
    drained_.notify_all();
  }

  void ShutdownConnections(int how) override {
    shared_.stop().Raise(config_.grace);  // the children's flag, before they are woken
    for (const auto& [pid, child] : children_) ShutdownForStop(child.fd, how, "connection");
  }

  void WaitForConnections() override {
    std::unique_lock<std::mutex> lock(mu_);
    accepting_ = false;
    changed_.notify_all();
    drained_.wait(lock, [this] { return children_.empty(); });
    lock.unlock();
    if (reaper_.joinable()) reaper_.join();
  }

  pid_t parent_ = 0;
  SharedPage shared_;
  std::thread reaper_;               // started with the first child
  std::condition_variable changed_;  // a child was forked, or the accept loop ended
  std::condition_variable drained_;  // a child was reaped
  bool accepting_ = true;            // guarded by mu_: false once the accept loop ended
  // Guarded by mu_: the children in service, by process id.
  absl::flat_hash_map<pid_t, Child> children_;
  std::vector<std::size_t> free_slots_;  // guarded by mu_: slots of reaped children
  std::size_t next_slot_ = 0;            // guarded by mu_: slots below it have been used
};

}  // namespace

BackendInfo ForkBackendInfo() {
  return {"fork",
          "the classic concurrent server: one process per connection (fork)",
          /*sharded=*/false,
          /*reactor=*/false,
          [] { return absl::OkStatus(); },
          [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<ForkBackend>(c);
          }};
}

}  // namespace upcase
