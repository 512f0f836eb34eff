#include "server/accept_errors.h"

#include <cerrno>

namespace upcase {

AcceptAction ClassifyAcceptError(int err) {
  switch (err) {
    case EINTR:
    case ECONNABORTED:
    case EPERM:
    // accept(2)'s pending network errors of TCP/IP.
    case ENETDOWN:
    case EPROTO:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
    // "Various Linux kernels can return other errors" (accept(2)).
    case ENOSR:
    case ESOCKTNOSUPPORT:
    case EPROTONOSUPPORT:
    case ETIMEDOUT:
      return AcceptAction::kRetry;
    case EBADF:
    case EINVAL:
    case ENOTSOCK:
    case EFAULT:
      return AcceptAction::kFatal;
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case ENOMEM:
    default:
      return AcceptAction::kBackOff;
  }
}

}  // namespace upcase
