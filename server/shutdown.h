// Graceful shutdown: the one policy every backend follows (README "Limits and failure behaviour").
//
// On Stop():
//   1. Stop accepting. What is still in a listener's backlog is reset by the kernel. UDP
//      datagrams the socket already holds are answered (at most 128), then UDP stops.
//   2. Every connection answers what its socket had received when the stop was seen
//      (ReceivedNotRead, SIOCINQ), and nothing after that.
//   3. It then lingers: its output is handed to the kernel and its FIN sent (the blocking
//      backends wait for the client's acknowledgement of the output before the FIN, see
//      blocking_io.h). While lingering, input is read and discarded, never answered: a client
//      still sending is not wedged against a full receive window, so it goes on to read its
//      replies, and the final close() meets no unread input. Closing a socket with unread input
//      makes Linux reset the connection and throw away the output the client has not
//      acknowledged yet.
//   4. It is closed once the client has acknowledged everything (OutputAcknowledged, checked
//      every kLingerPoll), or when the client closes, or when --grace runs out.
#ifndef UPCASE_SERVER_SHUTDOWN_H_
#define UPCASE_SERVER_SHUTDOWN_H_

#include <cstdint>

#include "absl/time/time.h"

namespace upcase {

// While lingering, how often a connection checks whether the client acknowledged its output.
inline constexpr absl::Duration kLingerPoll = absl::Milliseconds(10);

// Bytes the kernel has received on a connected TCP socket that were not read yet (SIOCINQ); 0 when
// the socket cannot say (it is no longer connected).
std::uint64_t ReceivedNotRead(int fd);

// Whether the client has acknowledged every byte sent on `fd`, FIN included (SIOCOUTQ == 0). Also
// true when the socket cannot say: then it is gone, and closing it loses nothing more.
bool OutputAcknowledged(int fd);

}  // namespace upcase

#endif  // UPCASE_SERVER_SHUTDOWN_H_
