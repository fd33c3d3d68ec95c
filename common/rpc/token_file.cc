#include "common/rpc/token_file.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file/file.h"

namespace diffmesh {
namespace {

// Far above any real token; a longer "line" is the wrong file.
constexpr size_t kMaxTokenBytes = 4096;
// Room for thousands of tokens; a larger file (or /dev/zero) is the wrong file.
constexpr size_t kMaxTokenFileBytes = 1 << 20;

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
  auto text = ReadFileBounded(path, kMaxTokenFileBytes);
  if (!text.ok()) {
    return absl::Status(text.status().code(), absl::StrCat("token file ", text.status().message()));
  }
  return ParseTokens(*text, source);
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
