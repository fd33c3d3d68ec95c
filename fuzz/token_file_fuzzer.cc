// Fuzzes bearer-token files: ParseTokens over the text and ReadTokenFile over the same bytes as
// a file. Accepted tokens are non-empty words of visible ASCII, at most 4096 bytes, and both
// paths agree.
#include <cstdint>
#include <string>

#include "common/rpc/token_file.h"
#include "fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static diffmesh::fuzz::MemoryFile file;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto parsed = diffmesh::ParseTokens(text, "fuzz");
  auto read = diffmesh::ReadTokenFile(file.Set(data, size));
  using diffmesh::fuzz::Check;
  Check(parsed.ok() == read.ok(), "ParseTokens and ReadTokenFile disagree");
  if (!parsed.ok()) return 0;
  Check(!parsed->empty(), "accepted a file with no token");
  Check(*parsed == *read, "ParseTokens and ReadTokenFile return different tokens");
  for (const std::string& token : *parsed) {
    Check(!token.empty() && token.size() <= 4096, "token length");
    for (char c : token) Check(c >= 0x21 && c <= 0x7e, "token is not visible ASCII");
  }
  auto client = diffmesh::ReadClientToken(file.path());
  Check(client.ok() == (parsed->size() == 1), "ReadClientToken accepts exactly one token");
  return 0;
}
