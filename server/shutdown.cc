#include "server/shutdown.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>

namespace upcase {

std::uint64_t ReceivedNotRead(int fd) {
  int queued = 0;
  if (::ioctl(fd, SIOCINQ, &queued) != 0 || queued < 0) return 0;  // fails only for listeners
  return static_cast<std::uint64_t>(queued);
}

bool OutputAcknowledged(int fd) {
  int unacked = 0;
  return ::ioctl(fd, SIOCOUTQ, &unacked) != 0 || unacked == 0;
}

}  // namespace upcase
