// Fuzzes the Gemma tokenizer's reader of SentencePiece model files (tokenizer.model, read by our
// own protobuf wire reader in models/ltx2/gemma_tokenizer.cc, not by libsentencepiece) and its
// encoder: the first byte is the length of a prompt, then the prompt, then the model file.
// A refusal is INVALID_ARGUMENT or UNIMPLEMENTED with a message; a loaded model encodes any
// prompt to ids within its vocabulary, one piece per id, and EncodePrompts gives left-padded rows
// of vocabulary ids with a mask of zeros then ones.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/fuzz_input.h"
#include "models/ltx2/gemma_tokenizer.h"

using diffmesh::fuzz::Check;
using diffmesh::models::ltx2::GemmaTokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t text_size = std::min<size_t>(data[0], size - 1);
  const std::string text(reinterpret_cast<const char*>(data + 1), text_size);
  const std::string_view model(reinterpret_cast<const char*>(data + 1 + text_size),
                               size - 1 - text_size);
  auto tokenizer = GemmaTokenizer::FromSerializedProto(model);
  if (!tokenizer.ok()) {
    Check(tokenizer.status().code() == absl::StatusCode::kInvalidArgument ||
              tokenizer.status().code() == absl::StatusCode::kUnimplemented,
          "a refusal that is neither INVALID_ARGUMENT nor UNIMPLEMENTED");
    Check(!tokenizer.status().message().empty(), "a refusal without a message");
    return 0;
  }
  const GemmaTokenizer& t = **tokenizer;
  const int vocab = t.vocab_size();
  Check(vocab >= 1, "a model without pieces");
  Check(t.unk_id() >= 0 && t.unk_id() < vocab, "unk id outside the vocabulary");

  const std::vector<int> ids = t.Encode(text);
  for (int id : ids) Check(id >= 0 && id < vocab, "Encode gave an id outside the vocabulary");
  const std::vector<std::string> pieces = t.EncodeAsPieces(text);
  Check(pieces.size() == ids.size(), "EncodeAsPieces and Encode differ in length");
  for (const std::string& piece : pieces) Check(!piece.empty(), "an empty piece");

  constexpr int64_t kMaxLength = 24;
  const auto batch = t.EncodePrompts({text, ""}, kMaxLength);
  Check(batch.num_prompts == 2 && batch.max_length == kMaxLength &&
            batch.input_ids.size() == 2 * kMaxLength &&
            batch.attention_mask.size() == 2 * kMaxLength,
        "EncodePrompts' shape");
  for (int64_t row = 0; row < 2; ++row) {
    bool tokens = false;
    for (int64_t j = 0; j < kMaxLength; ++j) {
      const int64_t id = batch.input_ids[row * kMaxLength + j];
      const int64_t mask = batch.attention_mask[row * kMaxLength + j];
      Check(mask == 0 || mask == 1, "a mask value other than 0 / 1");
      Check(mask == 1 || !tokens, "padding after a token (not left-padded)");
      if (mask == 1 && !tokens && t.bos_id() >= 0) Check(id == t.bos_id(), "no <bos> first");
      tokens |= mask == 1;
      Check(id >= 0 && id < vocab, "EncodePrompts gave an id outside the vocabulary");
    }
  }
  return 0;
}
