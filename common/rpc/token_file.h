// Bearer-token files: one token per line; surrounding whitespace is trimmed, blank lines and
// lines starting with '#' are skipped. A token is one word of visible ASCII (it travels in an
// `authorization: Bearer <token>` header). Errors name the file and line, never a token.
#ifndef DIFFMESH_COMMON_RPC_TOKEN_FILE_H_
#define DIFFMESH_COMMON_RPC_TOKEN_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace diffmesh {

// The tokens of `text`, in order; `source` names it in errors. INVALID_ARGUMENT when a line is
// not a valid token or when there is no token at all.
absl::StatusOr<std::vector<std::string>> ParseTokens(absl::string_view text,
                                                     absl::string_view source);

// ParseTokens over the file at `path` (NOT_FOUND / PERMISSION_DENIED / INVALID_ARGUMENT naming it;
// a file over 1 MiB, a directory or an endless device such as /dev/zero is INVALID_ARGUMENT).
absl::StatusOr<std::vector<std::string>> ReadTokenFile(const std::string& path);

// A client's token file: exactly one token.
absl::StatusOr<std::string> ReadClientToken(const std::string& path);

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_TOKEN_FILE_H_
