// Bearer-token checks: the orchestrator's API token (--auth-token-file) and the stage token that
// stage services require of the orchestrator (--stage-token-file). A call must carry exactly one
// `authorization: Bearer <token>` metadata entry with a token from the token file.
// gRPC-free (the service hands in the metadata values) so that it is unit-tested on its own.
#ifndef DIFFMESH_COMMON_RPC_TOKEN_AUTHENTICATOR_H_
#define DIFFMESH_COMMON_RPC_TOKEN_AUTHENTICATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace diffmesh {

class TokenAuthenticator {
 public:
  // `tokens` must not be empty (ReadTokenFile guarantees it). `what` names the token in
  // messages ("API token", "stage token").
  explicit TokenAuthenticator(std::vector<std::string> tokens, std::string what = "API token");

  // The tokens of a token file (common/rpc/token_file.h).
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(
      const std::string& path, std::string what = "API token");

  // `authorization`: every value of the call's "authorization" metadata. OK for exactly one
  // "Bearer <token>" (scheme case-insensitive) with a known token; UNAUTHENTICATED otherwise.
  // Messages say what was wrong, never what was sent. Tokens are compared in constant time:
  // how long a check takes does not depend on how much of a token was guessed right.
  absl::Status Check(const std::vector<absl::string_view>& authorization) const;

  size_t size() const { return tokens_.size(); }

 private:
  std::vector<std::string> tokens_;
  std::string what_;
};

// Equality whose running time depends on `given.size()` only, not on `secret`'s bytes nor on
// where the first difference is. `secret` must not be empty.
bool ConstantTimeEquals(absl::string_view secret, absl::string_view given);

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_TOKEN_AUTHENTICATOR_H_
