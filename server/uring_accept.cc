#include "server/uring_accept.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "server/accept_errors.h"

namespace upcase {

absl::Status UringAcceptor::Init(Fd listener) {
  listener_ = std::move(listener);
  if (!listener_.valid()) return absl::OkStatus();
  return SetNoDelay(listener_.get());
}

void UringAcceptor::AddAccept() {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_multishot_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, tags_.accept);
  armed_ = true;
}

int UringAcceptor::HandleAccept(const io_uring_cqe& cqe) {
  const bool more = cqe.flags & IORING_CQE_F_MORE;
  if (!more) armed_ = false;
  int accepted = -1;
  if (cqe.res >= 0) {
    if (stopped_) {
      ::close(cqe.res);  // raced with the cancel: not served any more
    } else {
      accepted = cqe.res;
    }
  } else if (cqe.res == -ECANCELED || (cqe.res == -EINVAL && stopped_)) {
    // Cancelled, or the listener was shut down (Stop): accepting is over.
  } else {
    switch (ClassifyAcceptError(-cqe.res)) {
      case AcceptAction::kRetry:  // that connection failed; the (re-armed) accept goes on
        break;
      case AcceptAction::kBackOff:  // keep serving, accept again later
        ++stats_->accept_errors;
        if (more) ring_->AddCancel(tags_.accept, tags_.cancel);
        if (!backing_off_) {
          backing_off_ = true;
          ring_->AddTimeout(&backoff_ts_, kBackoff, tags_.resume);
        }
        break;
      case AcceptAction::kFatal:  // the listener is broken: the shard stops
        if (error_.ok()) error_ = ErrnoError("accept (io_uring)", -cqe.res);
        if (more) ring_->AddCancel(tags_.accept, tags_.cancel);
        stopped_ = true;
        break;
    }
  }
  if (stopped_ && !armed_) {
    listener_.reset();
  } else if (!armed_ && !backing_off_ && !stopped_) {
    AddAccept();  // the multishot ended (e.g. a transient error): re-arm it
  }
  return accepted;
}

void UringAcceptor::HandleResume(const io_uring_cqe& cqe) {
  CheckTimeout(cqe, "accept backoff timeout");
  backing_off_ = false;
  if (!stopped_ && !armed_ && listener_.valid()) AddAccept();
}

void UringAcceptor::Stop() {
  stopped_ = true;
  if (!listener_.valid()) return;
  // SHUT_RD on a listener stops it listening at once and ends the multishot accept.
  if (::shutdown(listener_.get(), SHUT_RD) != 0) {
    // Not listening any more, or never was: the cancel below is all that is needed.
  }
  if (armed_) {
    ring_->AddCancel(tags_.accept, tags_.cancel);
  } else {
    listener_.reset();
  }
}

}  // namespace upcase
