#include "common/rpc/token_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace diffmesh {
namespace {

// Far above any real token; a longer "line" is the wrong file.
constexpr size_t kMaxTokenBytes = 4096;

bool VisibleAscii(absl::string_view s) {
  for (char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseTokens(absl::string_view text,
                                                     absl::string_view source) {
  std::vector<std::string> tokens;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);  // also a trailing '\r'
    if (line.empty() || line.front() == '#') continue;
    if (line.size() > kMaxTokenBytes) {
      return absl::InvalidArgumentError(absl::StrCat(source, " line ", line_number,
                                                     ": longer than ", kMaxTokenBytes, " bytes"));
    }
    if (!VisibleAscii(line)) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, " line ", line_number,
          ": a token is one word of visible ASCII (no spaces, no trailing comment)"));
    }
    tokens.emplace_back(line);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": no token (only blank lines and # comments)"));
  }
  return tokens;
}

absl::StatusOr<std::vector<std::string>> ReadTokenFile(const std::string& path) {
  const std::string source = absl::StrCat("token file '", path, "'");
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string message = absl::StrCat(source, ": ", std::strerror(err != 0 ? err : EIO));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::InvalidArgumentError(message);
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(source, ": cannot read it"));
  return ParseTokens(text.str(), source);
}

absl::StatusOr<std::string> ReadClientToken(const std::string& path) {
  auto tokens = ReadTokenFile(path);
  if (!tokens.ok()) return tokens.status();
  if (tokens->size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("token file '", path, "': holds ", tokens->size(),
                     " tokens; a client's token file holds one"));
  }
  return std::move(tokens->front());
}

}  // namespace diffmesh
