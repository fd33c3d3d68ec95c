// TCP sockets for the project's small servers (the metrics endpoint, the rendezvous store).
#ifndef DIFFMESH_COMMON_NET_TCP_H_
#define DIFFMESH_COMMON_NET_TCP_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace diffmesh::net {

// A listening socket (close-on-exec: processes this one starts must not hold the port) on
// host:port, the first of host's addresses that binds; port 0 picks a free one. INVALID_ARGUMENT
// when `host` does not resolve, UNAVAILABLE when no address binds; the message says why
// ("socket: ..." or the system's reason), not where.
absl::StatusOr<int> ListenTcp(const std::string& host, int port, int backlog);

// send() until all of `data` is written (MSG_NOSIGNAL, retrying on EINTR); false when the peer
// went away or the socket's send timeout ended it.
bool SendAll(int fd, std::string_view data);

}  // namespace diffmesh::net

#endif  // DIFFMESH_COMMON_NET_TCP_H_
