// Fuzzes the byte-level BPE tokenizer's reader of tokenizer.json (models/glm_image/
// bpe_tokenizer.cc, the GLM text encoders' tokenizer) and its encoder / decoder: the input is a
// tokenizer.json, optionally followed by a NUL byte and a text to encode (else a fixed mixed
// text). A refusal is INVALID_ARGUMENT with a message; a loaded tokenizer encodes valid UTF-8 to
// ids it knows, refuses invalid UTF-8, and decodes any ids (known or not) without failing.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_input.h"
#include "models/glm_image/bpe_tokenizer.h"

using diffmesh::fuzz::Check;
using diffmesh::models::glm_image::BpeTokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string json = input.substr(0, nul);
  const std::string text = nul == std::string::npos
                               ? std::string("Hello  world!\n\tcaf\xc3\xa9 123456 <|user|>[gMASK] "
                                             "\xe4\xbd\xa0\xe5\xa5\xbd  ")
                               : input.substr(nul + 1);
  auto tokenizer = BpeTokenizer::FromJson(json, "fuzz/tokenizer.json");
  if (!tokenizer.ok()) {
    Check(tokenizer.status().code() == absl::StatusCode::kInvalidArgument,
          "a refusal that is not INVALID_ARGUMENT");
    Check(!tokenizer.status().message().empty(), "a refusal without a message");
    return 0;
  }
  const BpeTokenizer& t = **tokenizer;
  Check(t.VocabSize() >= 0, "a negative vocabulary size");
  for (bool special : {true, false}) {
    auto ids = t.Encode(text, special);
    if (!ids.ok()) {
      Check(ids.status().code() == absl::StatusCode::kInvalidArgument,
            "Encode failed other than on invalid UTF-8");
      continue;
    }
    for (int64_t id : *ids) {
      Check(t.IdToToken(id).has_value(), "Encode gave an id the tokenizer does not know");
    }
    std::vector<int64_t> with_unknown = *ids;
    with_unknown.push_back(-1);
    with_unknown.push_back(int64_t{1} << 40);
    (void)t.Decode(with_unknown, special);
  }
  return 0;
}
