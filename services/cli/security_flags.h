// The `diffmesh` CLI's TLS and API-token flags: for the commands that call an orchestrator
// (generate --server, models --server) and for `up`, which hands them to the services it starts.
#ifndef DIFFMESH_SERVICES_CLI_SECURITY_FLAGS_H_
#define DIFFMESH_SERVICES_CLI_SECURITY_FLAGS_H_

#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "diffmesh/client.h"
#include "services/cli/args.h"
#include "services/cli/mesh.h"

namespace diffmesh::cli {

// --tls-ca, --tls-cert, --tls-key, --token-file.
const std::vector<FlagSpec>& ClientSecurityFlags();
// --tls-cert, --tls-key, --tls-client-ca, --tls-ca, --stage-tls-cert, --stage-tls-key,
// --auth-token-file.
const std::vector<FlagSpec>& MeshSecurityFlags();

std::vector<FlagSpec> WithFlags(std::vector<FlagSpec> specs, const std::vector<FlagSpec>& more);

// The client of --server (TLS and token from ClientSecurityFlags, files read and checked);
// nullopt without --server (then the security flags are an error: nothing would use them).
absl::StatusOr<std::optional<sdk::ClientOptions>> ServerClientOptions(const Args& args);

// Checks MeshSecurityFlags (pairs, prerequisites, readable files) and fills `mesh->security`.
absl::Status ApplyMeshSecurity(const Args& args, MeshOptions* mesh);

}  // namespace diffmesh::cli

#endif  // DIFFMESH_SERVICES_CLI_SECURITY_FLAGS_H_
