#include "server/uring_ring.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/net.h"
#include "common/sys.h"
#include "server/uring_levers.h"

namespace upcase {
namespace {

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

// Which of the opcodes the backend uses this kernel lacks: OK, or the list.
absl::Status CheckOpcodes(io_uring* ring) {
  io_uring_probe* probe = io_uring_get_probe_ring(ring);
  if (probe == nullptr) {
    return absl::UnavailableError("io_uring_register(PROBE) failed (kernel too old: needs 6.0)");
  }
  std::vector<std::string> missing;
  for (const RequiredOp& op : kRequiredOps) {
    if (!io_uring_opcode_supported(probe, op.op)) missing.push_back(op.name);
  }
  io_uring_free_probe(probe);
  if (missing.empty()) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("kernel lacks io_uring opcodes ",
                                             absl::StrJoin(missing, ", "), " (needs Linux 6.0)"));
}

// What the running kernel offers beyond the minimum.
struct KernelSupport {
  absl::Status status;  // ok: the uring backend can run
  bool recv_limit = false;
  bool ring_fd = false;       // io_uring_register_ring_fd (Linux 5.18)
  bool skip_success = false;  // IOSQE_CQE_SKIP_SUCCESS (Linux 5.17)
  bool min_wait = false;      // io_uring_getevents_arg.min_wait_usec (Linux 6.12)
  bool fixed_files = false;   // a sparse registered file table (Linux 5.19)
};

// Linux 6.12 reads a minimum wait from the 32 bits of io_uring_getevents_arg that liburing 2.3
// still calls pad (and that older kernels require to be 0).
void SetMinWaitUsec(io_uring_getevents_arg* arg, std::uint32_t usec) { arg->pad = usec; }

// An io_uring_enter() with an io_uring_getevents_arg (IORING_ENTER_EXT_ARG), which liburing 2.3
// cannot pass a minimum wait in. `ring_fd`/`registered`: the ring's fd or its registered index.
int EnterWithArg(int ring_fd, bool registered, unsigned to_submit, unsigned wait_nr,
                 const io_uring_getevents_arg& arg) {
  unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
  if (registered) flags |= IORING_ENTER_REGISTERED_RING;
  const long ret =
      ::syscall(__NR_io_uring_enter, ring_fd, to_submit, wait_nr, flags, &arg, sizeof arg);
  return ret < 0 ? -errno : static_cast<int>(ret);
}

KernelSupport ProbeKernel() {
  KernelSupport support;
  io_uring ring;
  if (int ret = io_uring_queue_init(8, &ring, 0); ret < 0) {
    support.status = SetupError(-ret);
    return support;
  }
  absl::Status& status = support.status;
  status = CheckOpcodes(&ring);
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
  // A registered ring fd (Linux 5.18): older kernels reject the register opcode (EINVAL).
  if (status.ok()) support.ring_fd = io_uring_register_ring_fd(&ring) == 1;
  support.skip_success = ring.features & IORING_FEAT_CQE_SKIP;
  if (status.ok()) support.fixed_files = io_uring_register_files_sparse(&ring, 1) == 0;
  // A minimum wait (Linux 6.12): older kernels reject a non-zero pad (EINVAL). Waiting for 0
  // completions returns at once.
  if (status.ok()) {
    io_uring_getevents_arg arg{};
    SetMinWaitUsec(&arg, 1);
    support.min_wait = EnterWithArg(ring.ring_fd, false, 0, 0, arg) == 0;
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

}  // namespace

absl::Status UringAvailable() { return Kernel().status; }

bool UseRecvLimit() {
  const char* env = std::getenv("UPCASE_URING_RECV_LIMIT");
  return Kernel().recv_limit && (env == nullptr || std::string_view(env) != "off");
}

unsigned UringLeversSupported(bool sqpoll) {
  unsigned levers = 0;
  if (Kernel().ring_fd) levers |= kLeverRingFd;
  // A skipped send is known to have succeeded once the io_uring_enter() that submitted it has
  // returned without its completion; with SQPOLL a kernel thread submits it at some other time.
  if (Kernel().skip_success && !sqpoll) levers |= kLeverSkipSuccess;
  // SubmitAndWaitBatch does not wake a sleeping SQPOLL thread (IORING_ENTER_SQ_WAKEUP).
  if (Kernel().min_wait && !sqpoll) levers |= kLeverMinWait;
  if (Kernel().fixed_files) levers |= kLeverFixedFiles;
  return levers;
}

void DieOnRingError(const absl::Status& status) {
  std::fprintf(stderr, "upcase-server: uring: %s\n", std::string(status.message()).c_str());
  std::abort();
}

void CheckTimeout(const io_uring_cqe& cqe, const char* what) {
  if (cqe.res != -ETIME && cqe.res != -ECANCELED) DieOnRingError(ErrnoError(what, -cqe.res));
}

// ---- Ring ----

void Ring::AddTimeout(__kernel_timespec* ts, absl::Duration d, std::uint64_t data) {
  ts->tv_sec = absl::ToInt64Seconds(d);
  ts->tv_nsec = absl::ToInt64Nanoseconds(d - absl::Seconds(ts->tv_sec));
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_timeout(sqe, ts, 0, 0);
  io_uring_sqe_set_data64(sqe, data);
}

absl::Status Ring::Create(const RingOptions& options) {
  const unsigned chain_plain[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                                  IORING_SETUP_COOP_TASKRUN, 0};
  const unsigned chain_sqpoll[] = {IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER,
                                   IORING_SETUP_SQPOLL};
  std::vector<unsigned> chain;
  if (options.sqpoll) {
    chain.assign(std::begin(chain_sqpoll), std::end(chain_sqpoll));
  } else {
    chain.assign(std::begin(chain_plain), std::end(chain_plain));
  }
  int ret = -EINVAL;
  for (unsigned flags : chain) {
    io_uring_params params{};
    params.flags = flags | IORING_SETUP_R_DISABLED | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE |
                   IORING_SETUP_CLAMP;
    params.cq_entries = options.cq_entries;
    params.sq_thread_idle = options.sq_thread_idle_ms;
    ret = io_uring_queue_init_params(options.sq_entries, &ring_, &params);
    if (ret == 0) {
      open_ = true;
      sqpoll_ = options.sqpoll;
      return absl::OkStatus();
    }
    if (ret != -EINVAL) break;  // EINVAL: an unknown flag, try the next set; else a real error
  }
  return SetupError(-ret);
}

absl::Status Ring::Enable(bool register_fd) {
  // liburing 2.3 declares io_uring_enable_rings() but its shared library does not export it (the
  // symbol is missing from its version map), so make the register call directly.
  if (::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) <
      0) {
    return ErrnoError("io_uring_register(ENABLE_RINGS)", errno);
  }
  // Lever ring-fd: io_uring_enter() then names the ring by its index in this thread's table of
  // registered rings (liburing passes IORING_ENTER_REGISTERED_RING), which skips the
  // fdget/fdput of the ring's file on every call. A refusal (the per-thread table is full) is
  // not an error: every enter then looks the ring fd up, as without the lever.
  registered_fd_ = register_fd && io_uring_register_ring_fd(&ring_) == 1;
  return absl::OkStatus();
}

void Ring::Close() {
  if (!open_) return;
  io_uring_queue_exit(&ring_);  // also drops the registered ring fd of this thread
  open_ = false;
}

io_uring_sqe* Ring::GetSqeAfterSubmitting() {
  io_uring_sqe* sqe = nullptr;
  for (int attempt = 0; sqe == nullptr; ++attempt) {
    // The SQ is full mid-batch: hand it to the kernel now. With SQPOLL, wait for its thread.
    const int ret = io_uring_submit(&ring_);
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
      DieOnRingError(ErrnoError("io_uring_submit", -ret));
    }
    if (sqpoll_) io_uring_sqring_wait(&ring_);
    sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr && attempt > 1000) {
      DieOnRingError(absl::ResourceExhaustedError("io_uring submission queue stays full"));
    }
  }
  return sqe;
}

absl::Status Ring::SubmitAndWait() {
  const int ret = io_uring_submit_and_wait(&ring_, 1);
  if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME) {
    return ErrnoError("io_uring_submit_and_wait", -ret);
  }
  return absl::OkStatus();
}

absl::Status Ring::SubmitAndWaitBatch(unsigned wait_nr, absl::Duration min_wait) {
  // What liburing's submit does before its io_uring_enter(): publish the queued entries (the SQ
  // array maps slot i to entry i, set up by liburing at init). Not for SQPOLL rings, whose
  // kernel thread may need a wake-up (UringLeversSupported leaves the lever out for them).
  io_uring_sq& sq = ring_.sq;
  if (sq.sqe_head != sq.sqe_tail) {
    sq.sqe_head = sq.sqe_tail;
    io_uring_smp_store_release(sq.ktail, sq.sqe_tail);
  }
  const unsigned to_submit = sq.sqe_tail - IO_URING_READ_ONCE(*sq.khead);
  // Without an overall timeout the kernel ends the wait at min_wait even with no completion at
  // all; with one, it then sleeps on for the first completion, as SubmitAndWait does.
  __kernel_timespec overall{24 * 3600, 0};
  io_uring_getevents_arg arg{};
  arg.sigmask_sz = _NSIG / 8;
  arg.ts = reinterpret_cast<std::uint64_t>(&overall);
  SetMinWaitUsec(&arg, static_cast<std::uint32_t>(absl::ToInt64Microseconds(min_wait)));
  const int ret = EnterWithArg(registered_fd_ ? ring_.enter_ring_fd : ring_.ring_fd, registered_fd_,
                               to_submit, wait_nr, arg);
  if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME) {
    return ErrnoError("io_uring_enter", -ret);
  }
  return absl::OkStatus();
}

bool Ring::WaitBriefly() {
  __kernel_timespec ts{0, 100'000'000};
  io_uring_cqe* cqe = nullptr;
  const int ret = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  return !(ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY);
}

// ---- BufferRing ----

BufferRing::~BufferRing() {
  if (ring_ != nullptr) ::munmap(ring_, ring_bytes_);
  if (buffers_ != nullptr) ::munmap(buffers_, buffer_bytes_);
}

absl::Status BufferRing::Init(io_uring* uring, std::uint16_t group, std::uint32_t count,
                              std::uint32_t size, std::uint32_t initial) {
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

bool BufferRing::Grow(std::uint32_t n) {
  if (given_ == count_) return false;
  const std::uint32_t end = std::min(count_, given_ + n);
  for (; given_ < end; ++given_) Return(static_cast<std::uint16_t>(given_));
  return true;
}

}  // namespace upcase
