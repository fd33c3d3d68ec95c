#include "common/rpc/token_authenticator.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/rpc/token_file.h"

namespace diffmesh {

bool ConstantTimeEquals(absl::string_view secret, absl::string_view given) {
  // volatile: the compiler may not turn the accumulation into an early exit.
  volatile unsigned char diff = secret.size() == given.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(secret[i % secret.size()] ^ given[i]);
  }
  return diff == 0;
}

TokenAuthenticator::TokenAuthenticator(std::vector<std::string> tokens, std::string what)
    : tokens_(std::move(tokens)), what_(std::move(what)) {}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromFile(
    const std::string& path, std::string what) {
  auto tokens = ReadTokenFile(path);
  if (!tokens.ok()) return tokens.status();
  return std::make_unique<TokenAuthenticator>(*std::move(tokens), std::move(what));
}

absl::Status TokenAuthenticator::Check(const std::vector<absl::string_view>& authorization) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat("missing ", what_, ": send metadata 'authorization: Bearer <token>'"));
  }
  if (authorization.size() > 1) {
    return absl::UnauthenticatedError("more than one 'authorization' metadata entry");
  }
  constexpr absl::string_view kScheme = "bearer ";
  absl::string_view value = authorization.front();
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError("'authorization' metadata is not 'Bearer <token>'");
  }
  const absl::string_view given = absl::StripAsciiWhitespace(value.substr(kScheme.size()));
  // Every token is compared, whichever matches: no early exit to time.
  bool match = false;
  for (const std::string& token : tokens_) match |= ConstantTimeEquals(token, given);
  if (!match) return absl::UnauthenticatedError(absl::StrCat("invalid ", what_));
  return absl::OkStatus();
}

}  // namespace diffmesh
