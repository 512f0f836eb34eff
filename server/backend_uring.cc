// uring: the multi-reactor server on io_uring. N shards, each one thread with its own ring.
//
// The model is epoll's (backend_epoll.cc): every shard owns a TCP listener and a UDP socket bound
// to the same port with SO_REUSEPORT, and a connection lives on the shard that accepted it. What
// changes is how a shard talks to the kernel. Instead of asking "what is ready?" and then making
// one system call per read and per write, a shard posts long-lived requests once and collects
// their results from a shared completion queue:
//
//   - one multishot accept per listener: every new connection is a completion, no accept4() call;
//   - one multishot recv per connection, into a ring of provided buffers the kernel picks from,
//     so no buffer is reserved for an idle connection and no recv() call is made per request;
//   - sends are queued as submissions; everything a loop iteration produced (sends, re-arms,
//     cancels, closes) goes to the kernel in the same io_uring_submit_and_wait() that waits for
//     the next completions: one system call per loop iteration, whatever the number of requests;
//   - UDP: one multishot recvmsg, and a sendmsg per datagram back to its source.
//
// With IORING_SETUP_DEFER_TASKRUN the kernel does the deferred work of a request (copying the
// data of a recv that became ready, posting its completion) only inside our io_uring_enter(),
// on this thread: no interrupts of the loop, better cache locality, and batches as large as the
// load makes them. The trade-off against epoll is a more involved life cycle per connection
// (requests still in flight must complete before a connection's slot can be reused) and memory
// registered per shard (the provided buffers) instead of one read buffer.
//
// Ordering and backpressure: at most one send is in flight per connection, so bytes leave in the
// order they arrived, and a short send is simply resubmitted for the rest. Output that cannot be
// sent yet waits in the connection's queue, capped by --conn-buffer as in epoll: a multishot recv
// stays armed only while the queue has room for what the kernel may still deliver (Linux >= 6.17
// ends it at a byte limit, one buffer of overshoot; older kernels need a cancel, which lands after
// up to kMultishotBurst buffers: see kLimitedRecvBuffers); nearer the cap the shard switches to
// single-shot recvs no larger than the room left, and at the cap it stops receiving until the
// queue drains.
//
// Shutdown (Stop): stop accepting; every connection reads what the kernel had received for it
// when Stop() came (SIOCINQ), answers it, sends its FIN and is closed once the client acknowledged
// everything (SIOCOUTQ == 0), or when --grace runs out. Not shutdown(SHUT_RD), see HandleStop.
//
// Setup flags, richest first, falling back when the kernel answers EINVAL:
//   SINGLE_ISSUER | DEFER_TASKRUN (6.1) -> COOP_TASKRUN (5.19) -> none;
//   with --sqpoll: SQPOLL | SINGLE_ISSUER -> SQPOLL (a kernel thread polls the submission queue,
//   trading a busy CPU for fewer system calls; DEFER_TASKRUN cannot be combined with it).
// Rings are created disabled in Open() and enabled by the shard's own thread, which SINGLE_ISSUER
// then binds them to; that thread also registers the ring fd, which spares the kernel a file
// table lookup in every io_uring_enter().
//
// Kernel needs: Linux >= 6.0 (multishot recv and recvmsg, provided buffer rings, cancel by fd);
// 6.1 for DEFER_TASKRUN; 6.17 for the multishot recv byte limit, used when present (see
// kLimitedRecvBuffers). BackendInfo::available() probes all of it at run time and says what is
// missing; without it the default backend falls back to epoll.
// Try it: upcase-server --backend=uring --shards=2 5050, then `nc 127.0.0.1 5050` and
// `nc -u 127.0.0.1 5050`; `strace -c -f` on the server shows almost nothing but io_uring_enter.
#include <linux/sockios.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/net.h"
#include "common/sys.h"
#include "common/uppercase.h"
#include "server/backend.h"
#include "server/blocking_io.h"
#include "server/listeners.h"
#include "server/shards.h"

#ifdef UPCASE_HAVE_URING
#include <liburing.h>
#endif

namespace upcase {

#ifdef UPCASE_HAVE_URING
namespace {

// ---- Tunables ----

// Submission queue entries; when it fills mid-batch, it is submitted early (GetSqe).
constexpr unsigned kSqEntries = 1024;
// Completion queue entries. Multishot requests post many completions per submission, so the CQ
// is much larger than the SQ; the kernel keeps any overflow (IORING_FEAT_NODROP), only slower.
constexpr unsigned kCqEntries = 16 * 1024;
// --sqpoll: how long the kernel's polling thread spins on an empty queue before it sleeps.
constexpr unsigned kSqThreadIdleMs = 50;

// TCP receive buffers, shared by all connections of a shard and handed back as soon as their
// bytes are sent or copied into the connection's output queue. The kernel cycles through every
// buffer it is given, so each one given ends up resident: a shard starts with kRecvBuffersInitial
// and gives more (up to kRecvBuffers, one completion per connection per loop iteration at the
// 512-connection benchmark point) only when a recv found none left (ENOBUFS).
constexpr std::uint32_t kRecvBuffers = 1024;  // a power of two, as the buffer ring requires
constexpr std::uint32_t kRecvBuffersInitial = 128;
// How many buffers a multishot recv may still fill once the output queue decides it has had
// enough. With the kernel's total-bytes limit (Linux 6.17; see SetMultishotLimit) each recv is
// armed with the room left less one buffer, and the completion that reaches the limit carries at
// most one buffer: two. Without it the recv must be cancelled, and it takes up to a burst of
// kMultishotBurst buffers from one wake-up of its socket before the kernel yields
// (MULTISHOT_MAX_RETRY, Linux >= 6.8), so the cancel lands after at most that many more (older
// kernels loop until the socket is empty: the bound is looser there).
constexpr std::size_t kLimitedRecvBuffers = 2;
constexpr std::size_t kMultishotBurst = 32;
// Their size: as large as --conn-buffer allows. A multishot recv stays armed while the buffers it
// may still fill fit into the output queue's free room (see ArmRecv), and that must hold at least
// while the queue is half full, or every reply would end the recv that brought its request. So
// those buffers must fit into half the cap: with the limit, 16 KiB from a 64 KiB cap on; without
// it, 4 KiB at the default 256 KiB and 16 KiB from 1 MiB. A 16 KiB request is then one completion
// instead of four.
constexpr std::uint32_t kMinRecvBufferSize = 4 * 1024;
constexpr std::uint32_t kMaxRecvBufferSize = 16 * 1024;

std::uint32_t RecvBufferSize(std::size_t conn_buffer, std::size_t in_flight) {
  std::uint32_t size = kMinRecvBufferSize;
  while (size < kMaxRecvBufferSize && in_flight * (2 * size) <= conn_buffer / 2) size *= 2;
  return size;
}

// UDP buffers hold what multishot recvmsg writes: its header, the source address and the
// payload, which is uppercased in place and sent back from the same buffer. So their number is
// also the bound on replies in flight.
constexpr std::uint32_t kUdpBuffers = 64;  // a power of two
constexpr std::size_t kUdpPayloadRoom = kMaxDatagram;
constexpr std::uint32_t kUdpBufferSize =
    (sizeof(io_uring_recvmsg_out) + sizeof(sockaddr_storage) + kUdpPayloadRoom + 4095) & ~4095u;

constexpr std::uint16_t kTcpBufferGroup = 0;
constexpr std::uint16_t kUdpBufferGroup = 1;

// Out of descriptors or memory in accept: wait this long before accepting again, so the loop
// neither spins on a listener it cannot serve nor stops serving connected clients.
constexpr absl::Duration kAcceptBackoff = absl::Milliseconds(20);
// During shutdown, how often to check whether a lingering connection's output was acknowledged.
constexpr absl::Duration kLingerPoll = absl::Milliseconds(2);
// At exit, how long to wait for the kernel to confirm that every cancelled request is gone.
constexpr absl::Duration kTeardownTimeout = absl::Seconds(1);

// ---- user_data: the one place it is encoded and decoded ----
//
// Every submission carries a 64-bit user_data that comes back in its completions:
//
//    63        56 55                  32 31                                  0
//   +------------+----------------------+-------------------------------------+
//   |   Op (8)   |  generation (24)     |  connection slot, or UDP buffer id  |
//   +------------+----------------------+-------------------------------------+
//
// The generation is the slot's reuse count: a slot is reused only after all its requests have
// completed (Conn::ops == 0), so a mismatch would be a bug here; it is checked, not relied on.
// Op values start at 1, so a zero user_data (e.g. from a forgotten set_data) is never valid.
enum class Op : std::uint8_t {
  kStop = 1,      // poll on the stop eventfd fired
  kAccept,        // multishot accept on the listener
  kAcceptResume,  // timeout before accepting again after EMFILE/ENFILE
  kGrace,         // timeout: the grace period after Stop() is over
  kLinger,        // timeout: check the lingering connections again
  kRecv,          // recv (multi- or single-shot) on a connection
  kSend,          // send on a connection
  kConnCancel,    // cancel of a connection's recv, or of all its requests
  kClose,         // close of a connection's descriptor
  kUdpRecv,       // multishot recvmsg on the UDP socket
  kUdpSend,       // sendmsg of one reply; index = the buffer it is sent from
  kCancel,        // any other cancel (accept, UDP recv, everything at exit)
};

struct Tag {
  Op op;
  std::uint32_t gen;    // 24 bits used
  std::uint32_t index;  // connection slot or UDP buffer id
};

constexpr std::uint32_t kGenMask = 0xFF'FFFF;

constexpr std::uint64_t Encode(Op op, std::uint32_t gen = 0, std::uint32_t index = 0) {
  return (static_cast<std::uint64_t>(op) << 56) |
         (static_cast<std::uint64_t>(gen & kGenMask) << 32) | index;
}

constexpr Tag Decode(std::uint64_t data) {
  return {static_cast<Op>(data >> 56), static_cast<std::uint32_t>(data >> 32) & kGenMask,
          static_cast<std::uint32_t>(data)};
}

// ---- Run-time probing ----

// kernel.io_uring_disabled (Linux 6.6): 0 allowed, 1 only for kernel.io_uring_group, 2 nobody.
int IoUringDisabledSysctl() {
  std::ifstream in("/proc/sys/kernel/io_uring_disabled");
  int value = -1;
  if (!(in >> value)) return -1;  // older kernel without the knob
  return value;
}

// io_uring_setup failed with `err`: name the call and, where the errno alone is cryptic, why.
absl::Status SetupError(int err) {
  std::string why;
  switch (err) {
    case ENOSYS:
      why = " (this kernel has no io_uring, or a seccomp filter hides it)";
      break;
    case EPERM:
      switch (IoUringDisabledSysctl()) {
        case 2:
          why = " (sysctl kernel.io_uring_disabled=2)";
          break;
        case 1:
          why =
              " (sysctl kernel.io_uring_disabled=1 and this user is not in "
              "kernel.io_uring_group)";
          break;
        default:
          why = " (refused by a security policy, e.g. seccomp or a container runtime)";
      }
      break;
    case ENOMEM:
      why = " (RLIMIT_MEMLOCK too low for this kernel's ring accounting?)";
      break;
    default:
      break;
  }
  const absl::Status s = ErrnoError("io_uring_setup", err);
  return absl::Status(s.code(), absl::StrCat(s.message(), why));
}

struct RequiredOp {
  int op;
  const char* name;
};
constexpr RequiredOp kRequiredOps[] = {
    {IORING_OP_ACCEPT, "ACCEPT"},   {IORING_OP_RECV, "RECV"},
    {IORING_OP_SEND, "SEND"},       {IORING_OP_RECVMSG, "RECVMSG"},
    {IORING_OP_SENDMSG, "SENDMSG"}, {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
    {IORING_OP_TIMEOUT, "TIMEOUT"}, {IORING_OP_POLL_ADD, "POLL_ADD"},
    {IORING_OP_CLOSE, "CLOSE"},
};

// A provided-buffer ring: up to `count` buffers of `size` bytes the kernel picks from for requests
// with IOSQE_BUFFER_SELECT in group `group`; `initial` of them are given at first, Grow() gives
// more. liburing 2.3 has no io_uring_setup_buf_ring, so the ring is mmap'ed (it must be page
// aligned) and registered here. Returned buffers become visible to the kernel at Commit(), once
// per loop iteration.
class BufferRing {
 public:
  BufferRing() = default;
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;
  ~BufferRing() {
    // The ring must be gone (io_uring_queue_exit) first: the kernel holds these pages pinned.
    if (ring_ != nullptr) ::munmap(ring_, ring_bytes_);
    if (buffers_ != nullptr) ::munmap(buffers_, buffer_bytes_);
  }

  absl::Status Init(io_uring* uring, std::uint16_t group, std::uint32_t count, std::uint32_t size,
                    std::uint32_t initial) {
    count_ = count;
    size_ = size;
    ring_bytes_ = (count * sizeof(io_uring_buf) + 4095) & ~std::size_t{4095};
    void* ring =
        ::mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED) return ErrnoError("mmap provided-buffer ring", errno);
    ring_ = static_cast<io_uring_buf_ring*>(ring);
    // Untouched buffer pages stay out of the resident set until the kernel first fills them.
    buffer_bytes_ = std::size_t{count} * size;
    void* buffers =
        ::mmap(nullptr, buffer_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffers == MAP_FAILED) return ErrnoError("mmap provided buffers", errno);
    buffers_ = static_cast<char*>(buffers);

    io_uring_buf_ring_init(ring_);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(ring_);
    reg.ring_entries = count;
    reg.bgid = group;
    if (int ret = io_uring_register_buf_ring(uring, &reg, 0); ret < 0) {
      return ErrnoError("io_uring_register_buf_ring", -ret);
    }
    Grow(initial);
    Commit();
    return absl::OkStatus();
  }

  // Gives the kernel up to n buffers it never had (visible at the next Commit()). False when
  // all `count` are given already.
  bool Grow(std::uint32_t n) {
    if (given_ == count_) return false;
    const std::uint32_t end = std::min(count_, given_ + n);
    for (; given_ < end; ++given_) Return(static_cast<std::uint16_t>(given_));
    return true;
  }
  std::uint32_t given() const { return given_; }
  std::uint64_t given_bytes() const { return std::uint64_t{given_} * size_; }

  char* Buffer(std::uint16_t bid) const { return buffers_ + std::size_t{bid} * size_; }
  std::uint32_t size() const { return size_; }

  void Return(std::uint16_t bid) {
    io_uring_buf_ring_add(ring_, Buffer(bid), size_, bid, io_uring_buf_ring_mask(count_),
                          returned_++);
  }
  void Commit() {
    if (returned_ == 0) return;
    io_uring_buf_ring_advance(ring_, returned_);
    returned_ = 0;
  }

 private:
  io_uring_buf_ring* ring_ = nullptr;
  std::size_t ring_bytes_ = 0;
  char* buffers_ = nullptr;
  std::size_t buffer_bytes_ = 0;
  std::uint32_t count_ = 0;
  std::uint32_t size_ = 0;
  std::uint32_t given_ = 0;  // buffers [0, given_) belong to the kernel or are in use
  int returned_ = 0;         // added since the last Commit()
};

// Linux 6.17 takes a total-bytes limit for a multishot recv in sqe->optlen, the 32 bits that
// liburing 2.3's io_uring_sqe still calls file_index. The kernel ends the recv (no
// IORING_CQE_F_MORE) with the completion that reaches the limit, which may carry up to a buffer
// less one byte beyond it. 0: no limit.
void SetMultishotLimit(io_uring_sqe* sqe, std::uint32_t limit) { sqe->file_index = limit; }

// What the kernel answered to one multishot recv of a 1-byte message: the first completion's
// result, and whether it said more were coming.
struct RecvProbe {
  int res = 0;
  bool more = false;
};

// Arms a multishot recv on a socket pair (with a total-bytes limit when `limit` > 0), sends it one
// byte, and reports the first completion. If the recv is still armed then, it is cancelled and
// its last completion awaited: a request left for io_uring_queue_exit() is cancelled by the
// kernel asynchronously, with task work that interrupts this thread's next blocking call (EINTR
// from a recv with SO_RCVTIMEO, say) long after the probe returned.
absl::StatusOr<RecvProbe> TryMultishotRecv(io_uring* ring, std::uint16_t group,
                                           std::uint32_t limit) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    return ErrnoError("socketpair (io_uring probe)", errno);
  }
  Fd a(pair[0]), b(pair[1]);
  BufferRing buffers;
  if (absl::Status s = buffers.Init(ring, group, 2, 64, 2); !s.ok()) {
    return absl::UnavailableError(
        absl::StrCat(s.message(), " (provided buffer rings need Linux 5.19)"));
  }
  constexpr std::uint64_t kProbeRecv = 1;
  constexpr std::uint64_t kProbeCancel = 2;
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  io_uring_prep_recv_multishot(sqe, a.get(), nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = group;
  SetMultishotLimit(sqe, limit);
  io_uring_sqe_set_data64(sqe, kProbeRecv);
  if (::write(b.get(), "x", 1) != 1) return ErrnoError("write (io_uring probe)", errno);
  RecvProbe first;
  bool more = false;
  bool seen = false;
  bool cancelled = false;
  while (!seen || more) {
    if (int ret = io_uring_submit_and_wait(ring, 1); ret < 0 && ret != -EINTR) {
      return ErrnoError("io_uring_enter (io_uring probe)", -ret);
    }
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(ring, &cqe) == 0) {
      if (cqe->user_data == kProbeRecv) {
        more = cqe->flags & IORING_CQE_F_MORE;
        if (!seen) first = {cqe->res, more};
        seen = true;
        if (more && !cancelled) {
          cancelled = true;
          io_uring_sqe* cancel = io_uring_get_sqe(ring);
          io_uring_prep_cancel64(cancel, kProbeRecv, 0);
          io_uring_sqe_set_data64(cancel, kProbeCancel);
        }
      }
      io_uring_cqe_seen(ring, cqe);
    }
  }
  return first;
}

// What the running kernel offers beyond the minimum (see the file comment).
struct KernelSupport {
  absl::Status status;  // ok: the uring backend can run
  bool recv_limit = false;
};

KernelSupport ProbeKernel() {
  KernelSupport support;
  io_uring ring;
  if (int ret = io_uring_queue_init(8, &ring, 0); ret < 0) {
    support.status = SetupError(-ret);
    return support;
  }
  absl::Status& status = support.status;
  if (io_uring_probe* probe = io_uring_get_probe_ring(&ring); probe == nullptr) {
    status = absl::UnavailableError("io_uring_register(PROBE) failed (kernel too old: needs 6.0)");
  } else {
    std::vector<std::string> missing;
    for (const RequiredOp& op : kRequiredOps) {
      if (!io_uring_opcode_supported(probe, op.op)) missing.push_back(op.name);
    }
    io_uring_free_probe(probe);
    if (!missing.empty()) {
      status = absl::UnavailableError(absl::StrCat(
          "kernel lacks io_uring opcodes ", absl::StrJoin(missing, ", "), " (needs Linux 6.0)"));
    }
  }
  // Multishot recv (Linux 6.0) has no feature bit or opcode of its own: try it. Without it the
  // kernel rejects the flag (EINVAL) or, before 5.19's checks, does one plain recv.
  if (status.ok()) {
    absl::StatusOr<RecvProbe> plain = TryMultishotRecv(&ring, 0, 0);
    if (!plain.ok()) {
      status = plain.status();
    } else if (plain->res == -EINVAL || (plain->res == 1 && !plain->more)) {
      status = absl::UnavailableError("kernel lacks multishot recv (needs Linux 6.0)");
    } else if (plain->res < 0) {
      status = ErrnoError("multishot recv (io_uring probe)", -plain->res);
    }
  }
  // A total-bytes limit (Linux 6.17): with a limit of one byte, the one completion ends the recv.
  // Older kernels reject the field (EINVAL).
  if (status.ok()) {
    absl::StatusOr<RecvProbe> limited = TryMultishotRecv(&ring, 1, 1);
    support.recv_limit = limited.ok() && limited->res == 1 && !limited->more;
  }
  io_uring_queue_exit(&ring);
  return support;
}

// The probe runs on a thread of its own. A task that created or used a ring gets task work from
// the kernel when that ring is torn down (io_ring_exit_work, with TWA_SIGNAL), some time later
// and asynchronously; that interrupts whatever the task is blocked in, e.g. a test's recv() with
// SO_RCVTIMEO fails with EINTR. A thread that has exited is simply skipped.
KernelSupport ProbeKernelOnOwnThread() {
  KernelSupport support;
  try {
    std::thread([&support] { support = ProbeKernel(); }).join();
  } catch (const std::system_error&) {
    support = ProbeKernel();  // out of threads: probe here, and live with the late interrupt
  }
  return support;
}

const KernelSupport& Kernel() {
  static const KernelSupport support = ProbeKernelOnOwnThread();  // the kernel does not change
  return support;
}

absl::Status UringAvailable() { return Kernel().status; }

// Whether multishot recvs get a total-bytes limit: when the kernel has it, unless
// UPCASE_URING_RECV_LIMIT=off asks for the older cancel-based backpressure (to compare the two,
// and so that tests cover both on a new kernel).
bool UseRecvLimit() {
  const char* env = std::getenv("UPCASE_URING_RECV_LIMIT");
  return Kernel().recv_limit && (env == nullptr || std::string_view(env) != "off");
}

// Creates a disabled ring with the richest flags this kernel accepts; see the file comment.
absl::Status CreateRing(io_uring* ring, bool sqpoll) {
  const unsigned chain_plain[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                                  IORING_SETUP_COOP_TASKRUN, 0};
  const unsigned chain_sqpoll[] = {IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER,
                                   IORING_SETUP_SQPOLL};
  std::vector<unsigned> chain;
  if (sqpoll) {
    chain.assign(std::begin(chain_sqpoll), std::end(chain_sqpoll));
  } else {
    chain.assign(std::begin(chain_plain), std::end(chain_plain));
  }
  int ret = -EINVAL;
  for (unsigned flags : chain) {
    io_uring_params params{};
    params.flags = flags | IORING_SETUP_R_DISABLED | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE |
                   IORING_SETUP_CLAMP;
    params.cq_entries = kCqEntries;
    params.sq_thread_idle = kSqThreadIdleMs;
    ret = io_uring_queue_init_params(kSqEntries, ring, &params);
    if (ret == 0) return absl::OkStatus();
    if (ret != -EINVAL) break;  // EINVAL: an unknown flag, try the next set; else a real error
  }
  return SetupError(-ret);
}

// liburing 2.3 declares io_uring_enable_rings() but its shared library does not export it (the
// symbol is missing from its version map), so make the register call directly.
int EnableRing(io_uring* ring) {
  const long ret =
      ::syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0);
  return ret < 0 ? -errno : 0;
}

// ---- Connection state ----

// Bytes that grow without zero-filling; for the rare overflow of an OutputQueue.
class Bytes {
 public:
  const char* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  void Release() {
    data_.reset();
    size_ = capacity_ = 0;
  }
  // Appends n bytes and returns where to write them.
  char* Extend(std::size_t n) {
    if (size_ + n > capacity_) {
      const std::size_t capacity = std::max(size_ + n, capacity_ * 2);
      auto grown = std::make_unique_for_overwrite<char[]>(capacity);
      if (size_ > 0) std::memcpy(grown.get(), data_.get(), size_);
      data_ = std::move(grown);
      capacity_ = capacity;
    }
    char* out = data_.get() + size_;
    size_ += n;
    return out;
  }
  void EraseFront(std::size_t n) {
    std::memmove(data_.get(), data_.get() + n, size_ - n);
    size_ -= n;
  }

 private:
  std::unique_ptr<char[]> data_;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

// Output the kernel has not taken yet, in order: a ring of --conn-buffer bytes, allocated at a
// connection's first reply and freed with it. The in-flight send reads front() in place and new
// output only goes into free space, so nothing moves under the kernel. Writing restarts at offset
// 0 whenever the ring empties, so request/response traffic keeps touching only its first page
// and a connection costs at most --conn-buffer of resident memory however long it lives.
// `overflow_` takes what a recv burst brought beyond the cap (only possible on kernels older than
// 6.8, see kMultishotBurst) and is empty otherwise.
class OutputQueue {
 public:
  std::size_t size() const { return size_ + overflow_.size(); }

  void AppendUppercased(const char* in, std::size_t n, std::size_t capacity) {
    if (ring_ == nullptr) {
      ring_ = std::make_unique_for_overwrite<char[]>(capacity);  // untouched pages stay virtual
      capacity_ = capacity;
    }
    const std::size_t into_ring = overflow_.size() == 0 ? std::min(n, capacity_ - size_) : 0;
    CopyIn(in, into_ring, /*uppercase=*/true);
    if (into_ring < n) Up(in + into_ring, overflow_.Extend(n - into_ring), n - into_ring);
  }

  // The next contiguous run to send, from the head; never wraps.
  const char* front() const { return ring_.get() + head_; }
  std::size_t front_size() const { return std::min(size_, capacity_ - head_); }

  // The kernel took n bytes of front(); no send is in flight now.
  void Consume(std::size_t n) {
    head_ += n;
    if (head_ >= capacity_) head_ -= capacity_;
    size_ -= n;
    if (size_ == 0) head_ = 0;
    if (overflow_.size() > 0) {
      const std::size_t moved = std::min(overflow_.size(), capacity_ - size_);
      CopyIn(overflow_.data(), moved, /*uppercase=*/false);
      overflow_.EraseFront(moved);
      if (overflow_.size() == 0) overflow_.Release();
    }
  }

  void Release() {
    ring_.reset();
    capacity_ = head_ = size_ = 0;
    overflow_.Release();
  }

 private:
  static void Up(const char* in, char* out, std::size_t n) {
    Uppercase(reinterpret_cast<const std::uint8_t*>(in), reinterpret_cast<std::uint8_t*>(out), n);
  }

  // Appends n bytes that fit into the ring's free space, wrapping at its end.
  void CopyIn(const char* in, std::size_t n, bool uppercase) {
    std::size_t tail = head_ + size_;
    if (tail >= capacity_) tail -= capacity_;
    const std::size_t first = std::min(n, capacity_ - tail);
    if (uppercase) {
      Up(in, ring_.get() + tail, first);
      Up(in + first, ring_.get(), n - first);
    } else {
      std::memcpy(ring_.get() + tail, in, first);
      std::memcpy(ring_.get(), in + first, n - first);
    }
    size_ += n;
  }

  std::unique_ptr<char[]> ring_;
  std::size_t capacity_ = 0;
  std::size_t head_ = 0;  // first unsent byte
  std::size_t size_ = 0;  // unsent bytes in the ring, from head_, wrapping
  Bytes overflow_;
};

// Input held in the provided buffer it arrived in, uppercased in place, until a direct send takes
// it (see Shard::AddDirectSend).
struct Held {
  std::uint16_t bid;
  std::uint32_t len;
};

// One TCP connection, owned by the shard that accepted it. Slots are reused; `ops` counts the
// requests of this connection the kernel still holds, and a slot is freed only when it is 0.
//
// Its output takes one of two paths, never both at once, so bytes leave in arrival order:
//   - direct (`out` empty): replies are sent straight from the provided buffers their requests
//     arrived in (`held`), without waiting (MSG_DONTWAIT). The kernel normally takes them at
//     once and the buffers go back to the ring within the same loop iteration: no copy, and no
//     per-connection memory touched, which matters for large requests.
//   - queued: when the socket cannot take everything (a slow or stuck reader), what is left is
//     copied into `out` and the buffers are returned at once, so a client that does not read
//     never holds buffers the whole shard shares. Everything after goes through `out` until it
//     is empty again.
struct Conn {
  int fd = -1;  // -1: the slot is free
  std::uint32_t index = 0;
  std::uint32_t gen = 0;
  std::uint32_t ops = 0;         // submitted requests whose final completion has not arrived
  bool recv_armed = false;       // a recv is in the kernel (until a completion without F_MORE)
  bool recv_multishot = false;   // ... and it is multishot
  bool recv_cancelling = false;  // ... and a cancel for it is on its way
  bool send_inflight = false;    // a send is in the kernel; at most one, for order
  bool send_direct = false;      // ... and it sends from `held`, not from `out`
  bool input_closed = false;     // recv returned 0 (the client's FIN), or read_limit was reached
  bool lingering = false;        // shutdown only: FIN sent, waiting for the client's last ACK
  bool closing = false;          // no more I/O: close once ops == 0
  bool cancel_all_sent = false;  // every request on fd has been asked to stop
  bool touched = false;          // in Shard::touched_: Progress() runs after this batch
  OutputQueue out;               // size() <= --conn-buffer, see kLimitedRecvBuffers
  std::vector<Held> held;        // direct path only: non-empty only while `out` is empty
  std::size_t held_sent = 0;     // bytes of held.front() already sent
  std::size_t held_bytes = 0;    // bytes in `held` not sent yet
  std::size_t direct_len = 0;    // bytes the direct send in flight covers (more may arrive)
  std::vector<iovec> iov;        // a direct send of several buffers; stable while it is in flight
  msghdr msg{};                  // ... pointing at `iov`
  std::uint64_t read_total = 0;  // bytes received on this connection
  std::uint64_t read_limit = UINT64_MAX;  // shutdown: what the kernel held when Stop() came

  std::size_t Unsent() const { return out.size() + held_bytes; }
};

struct UdpReply {
  msghdr msg;
  iovec iov;
};

// ---- The shard ----

// One reactor: a thread's whole world. Everything here is touched by that thread only; Stop()
// reaches it through the eventfd the backend owns.
class Shard {
 public:
  Shard(int index, const ServerConfig& config, std::size_t max_conns, int stop_fd)
      : index_(index), config_(config), max_conns_(max_conns), stop_fd_(stop_fd) {}
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard() {
    if (ring_open_) io_uring_queue_exit(&ring_);  // Run() never ran; before the buffers go
  }

  // In Open(): creates the ring (disabled until Run) and the buffer rings, so that any resource
  // problem is reported before the ready line.
  absl::Status Init(Fd listener, Fd udp) {
    if (absl::Status s = CreateRing(&ring_, config_.sqpoll); !s.ok()) return s;
    ring_open_ = true;
    listener_ = std::move(listener);
    udp_ = std::move(udp);
    if (listener_.valid()) {
      // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per connection.
      if (absl::Status s = SetNoDelay(listener_.get()); !s.ok()) return s;
      absl::Status s = tcp_buffers_.Init(&ring_, kTcpBufferGroup, kRecvBuffers, recv_buffer_size_,
                                         kRecvBuffersInitial);
      if (!s.ok()) return s;
    }
    if (udp_.valid()) {
      absl::Status s =
          udp_buffers_.Init(&ring_, kUdpBufferGroup, kUdpBuffers, kUdpBufferSize, kUdpBuffers);
      if (!s.ok()) return s;
      udp_replies_.resize(kUdpBuffers);
      udp_recv_msg_.msg_namelen = sizeof(sockaddr_storage);
    }
    return absl::OkStatus();
  }

  ShardStats stats() const {
    ShardStats s = stats_;
    s.provided_buffer_bytes = tcp_buffers_.given_bytes() + udp_buffers_.given_bytes();
    return s;
  }

  absl::Status Run() {
    if (config_.pin) {
      if (absl::Status s = PinCurrentThread(index_ % OnlineCpus()); !s.ok()) return s;
    }
    // SINGLE_ISSUER binds the ring to the thread that enables it: this one.
    if (int ret = EnableRing(&ring_); ret < 0) {
      return ErrnoError("io_uring_register(ENABLE_RINGS)", -ret);
    }
    if (io_uring_register_ring_fd(&ring_) < 0) {
      // Linux < 5.18, or the per-thread table is full. An optimization only: every enter then
      // looks the ring fd up in the file table, as without registration.
    }
    AddStopPoll();
    if (listener_.valid()) AddAccept();
    if (udp_.valid()) AddUdpRecv();
    absl::Status status = Loop();
    Teardown();
    return status;
  }

 private:
  // ---- Submitters: add_* in the liburing examples. Each counts what it leaves in flight. ----

  io_uring_sqe* GetSqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    for (int attempt = 0; sqe == nullptr; ++attempt) {
      // The SQ is full mid-batch: hand it to the kernel now. With SQPOLL, wait for its thread.
      const int ret = io_uring_submit(&ring_);
      if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
        Die(ErrnoError("io_uring_submit", -ret));
      }
      if (config_.sqpoll) io_uring_sqring_wait(&ring_);
      sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr && attempt > 1000) {
        Die(absl::ResourceExhaustedError("io_uring submission queue stays full"));
      }
    }
    ++inflight_;
    return sqe;
  }

  // The ring is broken beyond what a shard can recover from, in the middle of a handler.
  [[noreturn]] static void Die(const absl::Status& status) {
    std::fprintf(stderr, "upcase-server: uring: %s\n", std::string(status.message()).c_str());
    std::abort();
  }

  void AddStopPoll() {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_poll_add(sqe, stop_fd_, POLLIN);
    io_uring_sqe_set_data64(sqe, Encode(Op::kStop));
  }

  void AddAccept() {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_multishot_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, Encode(Op::kAccept));
    accept_armed_ = true;
  }

  void AddTimeout(Op op, __kernel_timespec* ts, absl::Duration d) {
    ts->tv_sec = absl::ToInt64Seconds(d);
    ts->tv_nsec = absl::ToInt64Nanoseconds(d - absl::Seconds(ts->tv_sec));
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_timeout(sqe, ts, 0, 0);
    io_uring_sqe_set_data64(sqe, Encode(op));
  }

  void AddCancel(std::uint64_t target) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, Encode(Op::kCancel));
  }

  void AddRecv(Conn& c, bool multishot) {
    io_uring_sqe* sqe = GetSqe();
    if (multishot) {
      io_uring_prep_recv_multishot(sqe, c.fd, nullptr, 0, 0);
      if (recv_limit_) {
        // All but one buffer of the room (ArmRecv left at least two): the completion that
        // reaches the limit may carry up to a buffer more.
        SetMultishotLimit(sqe,
                          static_cast<std::uint32_t>(std::min<std::size_t>(
                              config_.conn_buffer - c.Unsent() - recv_buffer_size_, UINT32_MAX)));
      }
    } else {
      // Never more than the queue can still take: it stays within --conn-buffer exactly.
      const std::size_t room =
          std::min<std::size_t>(recv_buffer_size_, config_.conn_buffer - c.Unsent());
      io_uring_prep_recv(sqe, c.fd, nullptr, room, 0);
    }
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kTcpBufferGroup;
    io_uring_sqe_set_data64(sqe, Encode(Op::kRecv, c.gen, c.index));
    c.recv_armed = true;
    c.recv_multishot = multishot;
    ++c.ops;
  }

  // Sends from `out`; waits in the kernel until the socket takes at least part of it.
  void AddSend(Conn& c) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_send(sqe, c.fd, c.out.front(), c.out.front_size(), MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, Encode(Op::kSend, c.gen, c.index));
    c.send_inflight = true;
    c.send_direct = false;
    ++c.ops;
  }

  // Sends everything `held` from the provided buffers themselves, one sendmsg for several. With
  // MSG_DONTWAIT the kernel never parks it: it takes what the socket has room for, or answers
  // EAGAIN, and HandleSend moves the rest into `out` (see Conn).
  void AddDirectSend(Conn& c) {
    io_uring_sqe* sqe = GetSqe();
    constexpr int kFlags = MSG_NOSIGNAL | MSG_DONTWAIT;
    const char* first = tcp_buffers_.Buffer(c.held.front().bid) + c.held_sent;
    if (c.held.size() == 1) {
      io_uring_prep_send(sqe, c.fd, first, c.held_bytes, kFlags);
    } else {
      c.iov.clear();
      c.iov.push_back({const_cast<char*>(first), c.held.front().len - c.held_sent});
      for (std::size_t i = 1; i < c.held.size(); ++i) {
        c.iov.push_back({tcp_buffers_.Buffer(c.held[i].bid), c.held[i].len});
      }
      c.msg = {};
      c.msg.msg_iov = c.iov.data();
      c.msg.msg_iovlen = c.iov.size();
      io_uring_prep_sendmsg(sqe, c.fd, &c.msg, kFlags);
    }
    io_uring_sqe_set_data64(sqe, Encode(Op::kSend, c.gen, c.index));
    c.direct_len = c.held_bytes;
    c.send_inflight = true;
    c.send_direct = true;
    ++c.ops;
  }

  void AddCancelRecv(Conn& c) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel64(sqe, Encode(Op::kRecv, c.gen, c.index), 0);
    io_uring_sqe_set_data64(sqe, Encode(Op::kConnCancel, c.gen, c.index));
    c.recv_cancelling = true;
    ++c.ops;
  }

  void AddCancelAll(Conn& c) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel_fd(sqe, c.fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, Encode(Op::kConnCancel, c.gen, c.index));
    c.cancel_all_sent = true;
    ++c.ops;
  }

  void AddClose(int fd) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, Encode(Op::kClose));
  }

  void AddUdpRecv() {
    io_uring_sqe* sqe = GetSqe();
    // MSG_TRUNC: payloadlen then reports a datagram's full size, so an oversized one is seen.
    io_uring_prep_recvmsg_multishot(sqe, udp_.get(), &udp_recv_msg_, MSG_TRUNC);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kUdpBufferGroup;
    io_uring_sqe_set_data64(sqe, Encode(Op::kUdpRecv));
    udp_recv_armed_ = true;
  }

  void AddUdpSend(std::uint16_t bid, void* peer, socklen_t peer_len, void* payload,
                  std::size_t len) {
    UdpReply& r = udp_replies_[bid];
    r.iov = {payload, len};
    r.msg = {};
    r.msg.msg_name = peer;
    r.msg.msg_namelen = peer_len;
    r.msg.msg_iov = &r.iov;
    r.msg.msg_iovlen = 1;
    io_uring_sqe* sqe = GetSqe();
    // MSG_DONTWAIT makes a full socket buffer fail the send (-EAGAIN) instead of the kernel
    // parking it until there is room: a reply that cannot go now is dropped, never queued.
    io_uring_prep_sendmsg(sqe, udp_.get(), &r.msg, MSG_DONTWAIT);
    io_uring_sqe_set_data64(sqe, Encode(Op::kUdpSend, 0, bid));
    ++udp_sends_;
  }

  // ---- Handlers: one per completion type ----

  void Handle(const io_uring_cqe& cqe) {
    const Tag tag = Decode(cqe.user_data);
    // A completion without F_MORE is the last one of its request.
    if (!(cqe.flags & IORING_CQE_F_MORE)) --inflight_;
    switch (tag.op) {
      case Op::kStop:
        HandleStop(cqe);
        break;
      case Op::kAccept:
        HandleAccept(cqe);
        break;
      case Op::kAcceptResume:
        HandleAcceptBackoff(cqe);
        break;
      case Op::kGrace:
        HandleGrace(cqe);
        break;
      case Op::kLinger:
        HandleLinger(cqe);
        break;
      case Op::kRecv:
      case Op::kSend:
      case Op::kConnCancel: {
        Conn* c = Find(tag);
        if (c == nullptr) {
          Die(absl::InternalError(
              absl::StrCat("completion for a stale connection slot ", tag.index)));
        }
        if (tag.op == Op::kRecv) HandleRecv(cqe, *c);
        if (tag.op == Op::kSend) HandleSend(cqe, *c);
        if (tag.op == Op::kConnCancel) HandleConnCancel(cqe, *c);
        Touch(*c);
        break;
      }
      case Op::kClose:
        // A failed close (EBADF would be a bug here; EINTR leaves the descriptor closed) has
        // nothing left to undo: the slot was released when the close was submitted.
        break;
      case Op::kUdpRecv:
        HandleUdpRecv(cqe);
        break;
      case Op::kUdpSend:
        HandleUdpSend(cqe, static_cast<std::uint16_t>(tag.index));
        break;
      case Op::kCancel:
        // res: 0 or a count when found, -ENOENT when the target had completed already, -EALREADY
        // when it was running; in every case its own completion follows or has arrived.
        break;
    }
  }

  // Progress() for `c` once the whole batch of completions is handled, not after each one: a
  // large request arrives as several recv completions (one per provided buffer) in one batch, and
  // they should leave as one send, not as a first send of one buffer and another send of the
  // rest a loop iteration later.
  void Touch(Conn& c) {
    if (c.touched) return;
    c.touched = true;
    touched_.push_back(c.index);
  }

  Conn* Find(const Tag& tag) {
    if (tag.index >= conns_.size()) return nullptr;
    Conn& c = conns_[tag.index];
    return c.fd >= 0 && c.gen == tag.gen ? &c : nullptr;
  }

  void HandleStop(const io_uring_cqe& cqe) {
    if (cqe.res < 0 && cqe.res != -ECANCELED) {
      Die(ErrnoError("poll on the stop eventfd", -cqe.res));  // -EBADF etc.: a bug
    }
    if (cqe.res == -ECANCELED || stopping_) return;
    stopping_ = true;
    // Stop accepting: SHUT_RD on a listener stops it listening at once (the kernel resets what is
    // still in its backlog) and ends the multishot accept.
    if (listener_.valid()) {
      if (::shutdown(listener_.get(), SHUT_RD) != 0) {
        // Not listening any more, or never was: the cancel below is all that is needed.
      }
      if (accept_armed_) {
        AddCancel(Encode(Op::kAccept));
      } else {
        listener_.reset();
      }
    }
    if (udp_.valid()) {
      // Datagrams already queued are answered now, as epoll does: the cancel would strand them.
      AnswerQueuedDatagrams(udp_.get(), stats_);
    }
    if (udp_recv_armed_) AddCancel(Encode(Op::kUdpRecv));
    // Every connection reads what the kernel had received before now, answers it, and closes
    // (see Linger). Not shutdown(SHUT_RD): its EOF comes whenever the receive queue runs dry, even
    // while the client's kernel still holds data for it, and once our FIN follows, Linux answers
    // any further data from the client with a reset that discards the replies not yet sent.
    for (Conn& c : conns_) {
      if (c.fd < 0 || c.input_closed || c.closing) continue;
      int queued = 0;
      if (::ioctl(c.fd, SIOCINQ, &queued) != 0 || queued <= 0) {
        c.input_closed = true;  // nothing waiting (or the client is gone already)
      } else {
        c.read_limit = c.read_total + static_cast<std::uint64_t>(queued);
      }
      Progress(c);
    }
    AddTimeout(Op::kGrace, &grace_ts_, config_.grace);
  }

  void HandleAccept(const io_uring_cqe& cqe) {
    const bool more = cqe.flags & IORING_CQE_F_MORE;
    if (!more) accept_armed_ = false;
    if (cqe.res >= 0) {
      if (stopping_) {
        ::close(cqe.res);  // raced with the cancel: not served any more
      } else {
        Admit(cqe.res);
      }
    } else {
      switch (-cqe.res) {
        case ECANCELED:
        case EINTR:
        case ECONNABORTED:  // the client gave up while queued
        case EPROTO:
        case EPERM:  // refused by a firewall rule
          break;
        case EINVAL:  // the listener was shut down (Stop)
          if (stopping_) break;
          [[fallthrough]];
        default:  // EMFILE, ENFILE, ENOBUFS, ENOMEM, ...: keep serving, accept again later
          ++stats_.accept_errors;
          if (more) AddCancel(Encode(Op::kAccept));
          if (!accept_backoff_) {
            accept_backoff_ = true;
            AddTimeout(Op::kAcceptResume, &backoff_ts_, kAcceptBackoff);
          }
          break;
      }
    }
    if (stopping_ && !accept_armed_) {
      listener_.reset();
    } else if (!accept_armed_ && !accept_backoff_ && !stopping_) {
      AddAccept();  // the multishot ended (e.g. a transient error): re-arm it
    }
  }

  void HandleAcceptBackoff(const io_uring_cqe& cqe) {
    // -ETIME: expired, as intended; -ECANCELED: cancelled at exit. Nothing else is possible.
    if (cqe.res != -ETIME && cqe.res != -ECANCELED) {
      Die(ErrnoError("accept backoff timeout", -cqe.res));
    }
    accept_backoff_ = false;
    if (!stopping_ && !accept_armed_ && listener_.valid()) AddAccept();
  }

  void HandleGrace(const io_uring_cqe& cqe) {
    if (cqe.res == -ECANCELED) return;  // the shard finished first
    if (cqe.res != -ETIME) Die(ErrnoError("grace timeout", -cqe.res));
    // Clients that never read their output: give up on them.
    for (Conn& c : conns_) {
      if (c.fd < 0 || c.closing) continue;
      c.closing = true;
      Progress(c);
    }
  }

  void HandleLinger(const io_uring_cqe& cqe) {
    if (cqe.res != -ETIME && cqe.res != -ECANCELED) Die(ErrnoError("linger timeout", -cqe.res));
    linger_armed_ = false;
    for (Conn& c : conns_) {
      if (c.fd >= 0 && c.lingering && !c.closing) Progress(c);
    }
  }

  void Admit(int fd) {
    if (live_ >= max_conns_) {
      ++stats_.rejected;
      ::close(fd);  // over --max-conns: the client sees an immediate close
      return;
    }
    if (free_slots_.empty()) {
      conns_.emplace_back();
      conns_.back().index = static_cast<std::uint32_t>(conns_.size() - 1);
      free_slots_.push_back(conns_.back().index);
    }
    Conn& c = conns_[free_slots_.back()];
    free_slots_.pop_back();
    c.fd = fd;
    ++live_;
    ++stats_.accepted;
    ArmRecv(c);
  }

  void HandleRecv(const io_uring_cqe& cqe, Conn& c) {
    const bool more = cqe.flags & IORING_CQE_F_MORE;
    if (cqe.flags & IORING_CQE_F_BUFFER) {
      TakeInput(c, static_cast<std::uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT), cqe.res);
    }
    if (cqe.res == 0) {
      c.input_closed = true;
    } else if (cqe.res < 0) {
      switch (-cqe.res) {
        case ENOBUFS:  // every buffer was taken in this round: give the kernel more
          tcp_buffers_.Grow(tcp_buffers_.given());
          break;
        case ECANCELED:  // backpressure or closing
        case EINTR:
          break;
        default:  // ECONNRESET; ETIMEDOUT after a vanished peer: as the other backends count it
          ++stats_.conn_resets;
          c.closing = true;
          break;
      }
    }
    if (!more) {
      --c.ops;
      c.recv_armed = false;
      c.recv_cancelling = false;
    } else if (!recv_limit_ && c.recv_multishot && !c.recv_cancelling && !c.closing &&
               c.Unsent() + multishot_headroom_ > config_.conn_buffer) {
      AddCancelRecv(c);  // near the cap: Progress() continues with single-shot recvs
    }
  }

  // The `n` bytes a recv put into buffer `bid`: held there for a direct send while `out` is
  // empty, else copied into `out` (see Conn). Either way uppercased.
  void TakeInput(Conn& c, std::uint16_t bid, int res) {
    char* data = tcp_buffers_.Buffer(bid);
    if (res > 0 && !c.closing) {
      const auto n = static_cast<std::size_t>(res);
      stats_.bytes_in += n;
      c.read_total += n;
      if (c.read_total >= c.read_limit) c.input_closed = true;
      if (c.out.size() == 0) {
        UppercaseInPlace(data, n);
        c.held.push_back({bid, static_cast<std::uint32_t>(n)});
        c.held_bytes += n;
        return;
      }
      c.out.AppendUppercased(data, n, config_.conn_buffer);
    }
    tcp_buffers_.Return(bid);  // at once: the buffer serves every connection of the shard
  }

  void HandleSend(const io_uring_cqe& cqe, Conn& c) {
    --c.ops;
    c.send_inflight = false;
    if (c.send_direct) return HandleDirectSend(cqe, c);
    if (cqe.res >= 0) {
      const auto n = static_cast<std::size_t>(cqe.res);
      stats_.bytes_out += n;
      c.out.Consume(n);  // a short send leaves the rest for the next one
      return;
    }
    HandleSendError(-cqe.res, c);
  }

  void HandleDirectSend(const io_uring_cqe& cqe, Conn& c) {
    std::size_t sent = cqe.res > 0 ? static_cast<std::size_t>(cqe.res) : 0;
    const bool short_send = sent < c.direct_len;
    stats_.bytes_out += sent;
    c.held_bytes -= sent;
    // Buffers sent in full go back to the ring.
    std::size_t done = 0;
    for (; done < c.held.size() && sent >= c.held[done].len - c.held_sent; ++done) {
      sent -= c.held[done].len - c.held_sent;
      c.held_sent = 0;
      tcp_buffers_.Return(c.held[done].bid);
    }
    c.held.erase(c.held.begin(), c.held.begin() + static_cast<std::ptrdiff_t>(done));
    c.held_sent += sent;
    if (cqe.res < 0 && cqe.res != -EAGAIN) return HandleSendError(-cqe.res, c);
    if (short_send) SpillHeld(c);  // the socket is full: the rest waits in `out`, buffers go back
  }

  // Moves what `held` has not sent into `out` (still empty, so order is kept) and returns the
  // buffers.
  void SpillHeld(Conn& c) {
    for (const Held& h : c.held) {
      // Uppercasing again changes nothing; AppendUppercased is simply the one way in.
      c.out.AppendUppercased(tcp_buffers_.Buffer(h.bid) + c.held_sent, h.len - c.held_sent,
                             config_.conn_buffer);
      c.held_sent = 0;
      tcp_buffers_.Return(h.bid);
    }
    c.held.clear();
    c.held_bytes = 0;
  }

  void HandleSendError(int err, Conn& c) {
    switch (err) {
      case ECANCELED:  // closing
      case EINTR:
      case EAGAIN:
        break;
      default:  // EPIPE, ECONNRESET: the client is gone
        ++stats_.conn_resets;
        c.closing = true;
        break;
    }
  }

  void HandleConnCancel(const io_uring_cqe& cqe, Conn& c) {
    // -ENOENT (already completed) and -EALREADY (completing) are fine: the target's own final
    // completion arrives regardless. Anything else would leave a request we cannot stop.
    if (cqe.res < 0 && cqe.res != -ENOENT && cqe.res != -EALREADY) {
      Die(ErrnoError("io_uring cancel", -cqe.res));
    }
    --c.ops;
  }

  // After any completion on `c`: send what is queued, receive if there is room, close when done.
  void Progress(Conn& c) {
    if (!c.closing && !c.lingering) {
      if (!c.send_inflight) {
        if (!c.held.empty()) {
          AddDirectSend(c);
        } else if (c.out.size() > 0) {
          AddSend(c);
        }
      }
      if (!c.input_closed) {
        if (!c.recv_armed) ArmRecv(c);
      } else if (c.recv_armed) {
        if (!c.recv_cancelling) AddCancelRecv(c);  // read_limit reached: no more input wanted
      } else if (!c.send_inflight) {
        if (stopping_) {
          Linger(c);
        } else {
          c.closing = true;  // the client half-closed and everything went out
        }
      }
    }
    if (c.lingering && !c.closing) {
      int unacked = 0;
      if (::ioctl(c.fd, SIOCOUTQ, &unacked) != 0 || unacked == 0) {
        c.closing = true;  // delivered (or the socket is gone): closing loses nothing now
      } else if (!linger_armed_) {
        linger_armed_ = true;
        AddTimeout(Op::kLinger, &linger_ts_, kLingerPoll);
      }
    }
    if (c.closing) {
      if (c.ops == 0) {
        Release(c);
      } else if (!c.cancel_all_sent && (c.recv_armed || c.send_inflight)) {
        AddCancelAll(c);
      }
    }
  }

  // At shutdown the client may still be sending. Closing a socket with unread input makes the
  // kernel send a reset, which also discards replies still in the socket's send queue. So send the
  // FIN after the last reply and close only once the client has acknowledged all of it (Progress
  // polls SIOCOUTQ every kLingerPoll): its kernel then holds every reply and the FIN, so the client
  // reads them all and then EOF, whatever follows. The grace period bounds the wait.
  void Linger(Conn& c) {
    c.lingering = true;
    if (::shutdown(c.fd, SHUT_WR) != 0) c.closing = true;  // ENOTCONN: the client is gone
  }

  // Receives as much as the output queue can take: multishot while what it may still fill fits
  // (with the kernel's limit, it ends by itself at the room left; without, a completion that finds
  // the room short cancels it), single recvs of at most the room left near the cap, nothing at the
  // cap (the next send completion comes back here through Progress).
  void ArmRecv(Conn& c) {
    const std::size_t unsent = c.Unsent();
    if (unsent + multishot_headroom_ <= config_.conn_buffer) {
      AddRecv(c, /*multishot=*/true);
    } else if (unsent < config_.conn_buffer) {
      AddRecv(c, /*multishot=*/false);
    }
  }

  void Release(Conn& c) {
    AddClose(c.fd);
    c.fd = -1;
    c.gen = (c.gen + 1) & kGenMask;
    c.recv_armed = c.recv_multishot = c.recv_cancelling = c.send_inflight = false;
    c.input_closed = c.lingering = c.closing = c.cancel_all_sent = false;
    c.read_total = 0;
    c.read_limit = UINT64_MAX;
    c.out.Release();
    for (const Held& h : c.held) tcp_buffers_.Return(h.bid);  // no send of them is in flight
    c.held.clear();
    c.held_sent = c.held_bytes = 0;
    free_slots_.push_back(c.index);
    --live_;
    ++stats_.closed;
  }

  void HandleUdpRecv(const io_uring_cqe& cqe) {
    if (!(cqe.flags & IORING_CQE_F_MORE)) udp_recv_armed_ = false;
    if (cqe.flags & IORING_CQE_F_BUFFER) {
      const auto bid = static_cast<std::uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
      char* buf = udp_buffers_.Buffer(bid);
      io_uring_recvmsg_out* out = io_uring_recvmsg_validate(buf, cqe.res, &udp_recv_msg_);
      ++stats_.datagrams_in;
      if (out == nullptr || out->namelen > udp_recv_msg_.msg_namelen || (out->flags & MSG_TRUNC) ||
          out->payloadlen > kMaxDatagram) {
        // Larger than any reply we may send (IPv6 allows 65527 bytes; the buffer has room).
        ++stats_.udp_drops;
        udp_buffers_.Return(bid);
      } else {
        void* payload = io_uring_recvmsg_payload(out, &udp_recv_msg_);
        const unsigned len = io_uring_recvmsg_payload_length(out, cqe.res, &udp_recv_msg_);
        UppercaseInPlace(static_cast<char*>(payload), len);
        AddUdpSend(bid, io_uring_recvmsg_name(out), out->namelen, payload, len);
      }
    } else if (cqe.res < 0) {
      // ENOBUFS: every buffer holds a reply in flight; re-armed when one comes back. ECANCELED:
      // shutdown. Anything else (an ICMP error for an earlier reply) ends the multishot only.
    }
    MaybeRearmUdp();
  }

  void HandleUdpSend(const io_uring_cqe& cqe, std::uint16_t bid) {
    --udp_sends_;
    if (cqe.res >= 0) {
      ++stats_.datagrams_out;
    } else {
      ++stats_.udp_drops;  // EAGAIN (socket buffer full), or this destination failed
    }
    udp_buffers_.Return(bid);
    MaybeRearmUdp();
  }

  void MaybeRearmUdp() {
    // Only with a buffer to spare, else the new recvmsg would fail at once with ENOBUFS.
    if (!udp_recv_armed_ && !stopping_ && udp_sends_ < kUdpBuffers) AddUdpRecv();
  }

  // ---- The loop ----

  bool Finished() const {
    return stopping_ && live_ == 0 && !accept_armed_ && !udp_recv_armed_ && udp_sends_ == 0;
  }

  void Reap() {
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      Handle(*cqe);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    for (const std::uint32_t index : touched_) {
      Conn& c = conns_[index];
      c.touched = false;
      if (c.fd >= 0) Progress(c);
    }
    touched_.clear();
    tcp_buffers_.Commit();
    udp_buffers_.Commit();
  }

  absl::Status Loop() {
    while (!Finished()) {
      // Submits everything the last round produced and sleeps until the next completion.
      const int ret = io_uring_submit_and_wait(&ring_, 1);
      if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME) {
        return ErrnoError("io_uring_submit_and_wait", -ret);
      }
      Reap();
    }
    return absl::OkStatus();
  }

  // Cancels whatever is still in flight (the grace timer; everything, after an error) and waits
  // until the kernel confirmed it, so no request outlives the memory it points into.
  void Teardown() {
    stopping_ = true;
    for (Conn& c : conns_) {
      if (c.fd >= 0 && !c.closing) {
        c.closing = true;
        Progress(c);
      }
    }
    if (inflight_ > 0) {
      io_uring_sqe* sqe = GetSqe();
      io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
      io_uring_sqe_set_data64(sqe, Encode(Op::kCancel));
    }
    const std::int64_t deadline = MonotonicNanos() + absl::ToInt64Nanoseconds(kTeardownTimeout);
    while (inflight_ > 0 && MonotonicNanos() < deadline) {
      __kernel_timespec ts{0, 100'000'000};
      io_uring_cqe* cqe = nullptr;
      const int ret = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) break;
      Reap();
    }
    for (Conn& c : conns_) {
      if (c.fd >= 0) ::close(c.fd);  // only if the kernel never confirmed the cancel
    }
    io_uring_queue_exit(&ring_);  // also drops the registered ring fd of this thread
    ring_open_ = false;
    listener_.reset();
    udp_.reset();
  }

  const int index_;
  const ServerConfig& config_;
  const std::size_t max_conns_;  // this shard's share of --max-conns
  const int stop_fd_;            // the backend's eventfd; readable once Stop() was called
  const bool recv_limit_ = UseRecvLimit();
  // Buffers a multishot recv may still fill (see kLimitedRecvBuffers), their size, and so the free
  // room in the output queue that keeps a multishot recv armed.
  const std::size_t recv_in_flight_ = recv_limit_ ? kLimitedRecvBuffers : kMultishotBurst;
  const std::uint32_t recv_buffer_size_ = RecvBufferSize(config_.conn_buffer, recv_in_flight_);
  const std::size_t multishot_headroom_ = recv_in_flight_ * recv_buffer_size_;

  io_uring ring_{};
  bool ring_open_ = false;
  BufferRing tcp_buffers_;
  BufferRing udp_buffers_;
  Fd listener_;  // invalid when TCP is not served, and once shutdown stopped accepting
  Fd udp_;

  std::deque<Conn> conns_;  // slots; a deque so references stay valid as it grows
  std::vector<std::uint32_t> free_slots_;
  std::vector<std::uint32_t> touched_;  // slots with completions in this batch, see Touch
  std::size_t live_ = 0;

  msghdr udp_recv_msg_{};              // layout template for multishot recvmsg: name, no control
  std::vector<UdpReply> udp_replies_;  // indexed by UDP buffer id
  std::uint32_t udp_sends_ = 0;        // replies in flight, each holding its buffer

  std::uint64_t inflight_ = 0;  // requests whose final completion has not arrived
  bool accept_armed_ = false;   // armed iff a multishot accept is in the kernel
  bool accept_backoff_ = false;
  bool linger_armed_ = false;  // a kLinger timeout is in the kernel
  bool udp_recv_armed_ = false;
  bool stopping_ = false;  // Stop() was seen
  __kernel_timespec backoff_ts_{};
  __kernel_timespec grace_ts_{};
  __kernel_timespec linger_ts_{};

  ShardStats stats_;
};

class UringBackend : public Backend {
 public:
  explicit UringBackend(const ServerConfig& config) : config_(config) {}

  absl::StatusOr<Endpoints> Open() override {
    stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop_fd_.valid()) return ErrnoError("eventfd", errno);
    const int count = std::max(config_.shards, 1);
    absl::StatusOr<Listeners> listeners = OpenListeners(config_, count, /*non_blocking=*/true);
    if (!listeners.ok()) return listeners.status();
    const std::size_t per_shard = PerShardLimit(config_.max_conns, count);
    for (int i = 0; i < count; ++i) {
      auto shard = std::make_unique<Shard>(i, config_, per_shard, stop_fd_.get());
      Fd tcp = listeners->tcp.empty() ? Fd() : std::move(listeners->tcp[i]);
      Fd udp = listeners->udp.empty() ? Fd() : std::move(listeners->udp[i]);
      if (absl::Status s = shard->Init(std::move(tcp), std::move(udp)); !s.ok()) return s;
      shards_.push_back(std::move(shard));
    }
    return listeners->endpoints;
  }

  absl::Status Run() override {
    return RunShards(
        shards_.size(), [this](std::size_t i) { return shards_[i]->Run(); }, [this] { Stop(); });
  }

  void Stop() override {
    if (!stop_fd_.valid()) return;
    // One eventfd for all shards: it stays readable, so every shard's poll on it fires.
    const std::uint64_t one = 1;
    // Cannot fail: the descriptor lives as long as the backend and the counter would need 2^64
    // calls to overflow. A failure would leave the shards running forever, so do not go on.
    if (::write(stop_fd_.get(), &one, sizeof one) != sizeof one) std::abort();
  }

  std::vector<ShardStats> Stats() const override {
    std::vector<ShardStats> out;
    for (const std::unique_ptr<Shard>& shard : shards_) out.push_back(shard->stats());
    return out;
  }

 private:
  const ServerConfig config_;
  Fd stop_fd_;
  std::vector<std::unique_ptr<Shard>> shards_;  // fixed once Open() returned
};

}  // namespace

BackendInfo UringBackendInfo() {
  return {"uring", "multi-reactor: one io_uring per shard, multishot accept/recv, provided buffers",
          /*sharded=*/true, UringAvailable, [](const ServerConfig& c) -> std::unique_ptr<Backend> {
            return std::make_unique<UringBackend>(c);
          }};
}

#else  // !UPCASE_HAVE_URING

// Built without liburing: the backend is listed, and says why it cannot run.
BackendInfo UringBackendInfo() {
  return {"uring", "multi-reactor: one io_uring per shard (not in this build)",
          /*sharded=*/true,
          [] {
            return absl::UnimplementedError(
                "this build has no liburing (install liburing-dev and rebuild)");
          },
          [](const ServerConfig&) -> std::unique_ptr<Backend> { return nullptr; }};
}

#endif  // UPCASE_HAVE_URING

}  // namespace upcase
