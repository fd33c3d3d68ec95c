// The server TLS flags every diffmesh service binary takes, defined once so that each binary
// has the same names and help text:
//   --tls-cert FILE --tls-key FILE [--tls-client-ca FILE]
// No --tls-cert: plaintext. With --tls-client-ca: mutual TLS (a client certificate signed by
// that CA is required).
#ifndef DIFFMESH_COMMON_RPC_TLS_FLAGS_H_
#define DIFFMESH_COMMON_RPC_TLS_FLAGS_H_

#include <optional>

#include "absl/status/statusor.h"
#include "common/rpc/tls.h"

namespace diffmesh {

// The files named by the flags, read and checked (INVALID_ARGUMENT / NOT_FOUND naming the flag
// or the file); nullopt when no TLS flag is given. Call after ParseFlags.
absl::StatusOr<std::optional<ServerTls>> ServerTlsFromFlags();

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_TLS_FLAGS_H_
