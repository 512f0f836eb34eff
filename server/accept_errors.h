// What a failed accept() means, decided in one place for every backend (the blocking acceptors,
// epoll's accept4 and uring's accept completions).
//
// accept(2): Linux passes network errors already pending on a new connection to accept() as its
// result, "For reliable operation the application should detect the network errors defined for
// the protocol after accept() and treat them like EAGAIN by retrying" (ENETDOWN, EPROTO,
// ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH); EPERM is a firewall
// rule refusing that one connection and ECONNABORTED a client that gave up while queued. Running
// out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) goes away when connections
// close, so the acceptor backs off and tries again. Only a broken listener (EBADF, EINVAL,
// ENOTSOCK, EFAULT) ends it.
#ifndef UPCASE_SERVER_ACCEPT_ERRORS_H_
#define UPCASE_SERVER_ACCEPT_ERRORS_H_

namespace upcase {

enum class AcceptAction {
  kRetry,    // that one connection failed (or the call was interrupted): accept the next one now
  kBackOff,  // out of a resource: count it, keep serving, accept again after a pause
  kFatal,    // the listener itself is unusable: stop serving with the error
};

// `err` is accept's errno, not EAGAIN/EWOULDBLOCK (a non-blocking listener with nothing queued,
// which callers handle first). An errno not named above (a kernel may add one) backs off: a
// server that stops on an unknown per-connection error, or spins on a persistent one, is worse.
AcceptAction ClassifyAcceptError(int err);

}  // namespace upcase

#endif  // UPCASE_SERVER_ACCEPT_ERRORS_H_
