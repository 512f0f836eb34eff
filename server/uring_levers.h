// The uring backend's optional io_uring features ("levers"), chosen with --uring-levers: each one
// removes a cost from the request path, and each can be turned off to measure what it buys
// (docs/upcase-server.md). The running kernel may lack one; UringLeversInEffect says which of
// those asked for the backend actually uses after probing, and --stats-json records it.
//
// This file does not need liburing: the command line parses lever names on any build.
#ifndef UPCASE_SERVER_URING_LEVERS_H_
#define UPCASE_SERVER_URING_LEVERS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace upcase {

// A set of levers, one bit each.
enum UringLever : unsigned {
  // io_uring_register_ring_fd: io_uring_enter names the ring by its index in the thread's
  // registered-ring table, which skips the fdget/fdput of the ring's file on every call.
  kLeverRingFd = 1u << 0,
  // IOSQE_CQE_SKIP_SUCCESS on the direct sends a connection with an armed multishot recv makes:
  // a send the socket takes in full posts no completion, so the kernel fills one CQE less per
  // reply and the shard handles one less (backend_uring.cc, AddDirectSend). Not with --sqpoll.
  kLeverSkipSuccess = 1u << 1,
  // Wait batching (Linux 6.12's min_wait): once a completion has arrived, the shard sleeps on
  // until more have (one per connection, up to a batch) or --uring-min-wait has passed, so
  // below saturation one wake-up handles several completions. Trades latency for wake-ups.
  kLeverMinWait = 1u << 2,
  // A connection's socket also sits in the shard's registered file table, and its recvs, sends
  // and cancels name it by index (IOSQE_FIXED_FILE): each request skips the file table lookup
  // and the reference count of the socket's file. Costs two io_uring_register calls per
  // connection (at admission and release), which a long connection repays.
  kLeverFixedFiles = 1u << 3,
};

inline constexpr unsigned kAllUringLevers =
    kLeverRingFd | kLeverSkipSuccess | kLeverMinWait | kLeverFixedFiles;
// What --uring-levers=default (and no flag) asks for: the levers measured to pay, or that the
// backend always had (ring-fd). skip-success and fixed-files measured `same` CPU per request and
// requests/s in 40-round A/Bs, and min-wait costs latency: off (results/uring-levers).
inline constexpr unsigned kDefaultUringLevers = kLeverRingFd;

// "default", "all", "none", or comma-separated lever names, each optionally prefixed by '-' to
// take it out of the set so far (which starts empty, or from default/all/none when the list
// begins with one of them): e.g. "default,-ring-fd". InvalidArgument names the bad item.
absl::StatusOr<unsigned> ParseUringLevers(absl::string_view list);

// The levers of `set` by name, comma-separated, in declaration order; "none" for the empty set.
std::string UringLeverNames(unsigned set);

// Every lever name, comma-separated (for --help).
std::string AllUringLeverNames();

// Which of `requested` the uring backend uses on this kernel (0 without liburing or io_uring):
// a lever the kernel lacks is left out, as is one that cannot work with `sqpoll`.
unsigned UringLeversInEffect(unsigned requested, bool sqpoll);

}  // namespace upcase

#endif  // UPCASE_SERVER_URING_LEVERS_H_
