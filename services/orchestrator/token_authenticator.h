// The orchestrator's API-token check: a GenerationService call must carry exactly one
// `authorization: Bearer <token>` metadata entry with a token from the --auth-token-file.
// gRPC-free (the service hands in the metadata values) so that it is unit-tested on its own.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_TOKEN_AUTHENTICATOR_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_TOKEN_AUTHENTICATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace diffmesh {

class TokenAuthenticator {
 public:
  // `tokens` must not be empty (ReadTokenFile guarantees it).
  explicit TokenAuthenticator(std::vector<std::string> tokens);

  // The tokens of a token file (common/rpc/token_file.h).
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(const std::string& path);

  // `authorization`: every value of the call's "authorization" metadata. OK for exactly one
  // "Bearer <token>" (scheme case-insensitive) with a known token; UNAUTHENTICATED otherwise.
  // Messages say what was wrong, never what was sent. Tokens are compared in constant time:
  // how long a check takes does not depend on how much of a token was guessed right.
  absl::Status Check(const std::vector<absl::string_view>& authorization) const;

  size_t size() const { return tokens_.size(); }

 private:
  std::vector<std::string> tokens_;
};

// Equality whose running time depends on `given.size()` only, not on `secret`'s bytes nor on
// where the first difference is. `secret` must not be empty.
bool ConstantTimeEquals(absl::string_view secret, absl::string_view given);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_TOKEN_AUTHENTICATOR_H_
