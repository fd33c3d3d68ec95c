// Gemma's tokenizer for LTX-2 prompts: a SentencePiece BPE model (tokenizer.model) with byte
// fallback, and the LTX2Pipeline prompt preparation (strip, <bos>, truncate, left-pad to
// max_sequence_length with the attention mask).
//
// The model file is read and applied here rather than through libsentencepiece: Debian's
// libsentencepiece exports the protobuf-lite it bundles, which interposes on LibTorch's
// libprotobuf and crashes any binary that links both. The encoding follows SentencePiece 0.1.97
// (normalizer.cc, bpe_model.cc, sentencepiece_processor.cc): the identity normaliser (an empty
// precompiled_charsmap) with add_dummy_prefix / remove_extra_whitespaces / escape_whitespaces,
// user-defined symbols kept whole, the greedy best-score pair merge with leftmost tie-break,
// unused-piece resegmentation, and unknown pieces split into <0xXX> byte pieces. Models with a
// precompiled normalisation charsmap or a model type other than BPE are UNIMPLEMENTED.
// ATen-free.
#ifndef DIFFMESH_MODELS_LTX2_GEMMA_TOKENIZER_H_
#define DIFFMESH_MODELS_LTX2_GEMMA_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh::models::ltx2 {

// Left-padded prompt batch, row-major [num_prompts, max_length].
struct PromptTokens {
  int64_t num_prompts = 0;
  int64_t max_length = 0;
  std::vector<int64_t> input_ids;       // pad_id on padding
  std::vector<int64_t> attention_mask;  // 1 on tokens, 0 on padding
};

// Python's str.strip(): removes leading and trailing characters for which str.isspace() holds
// (ASCII \t\n\v\f\r, \x1c-\x1f and space, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
// U+202F, U+205F, U+3000). `text` is UTF-8.
std::string StripPythonWhitespace(std::string_view text);

class GemmaTokenizer {
 public:
  // `path` is a tokenizer.model file or a directory holding one (a snapshot's tokenizer/).
  static absl::StatusOr<std::unique_ptr<GemmaTokenizer>> Load(const std::string& path);
  // A serialized sentencepiece ModelProto.
  static absl::StatusOr<std::unique_ptr<GemmaTokenizer>> FromSerializedProto(
      std::string_view proto);

  // SentencePieceProcessor::Encode(text): ids without BOS/EOS. `text` is UTF-8 (malformed bytes
  // normalise to U+FFFD, as SentencePiece does).
  std::vector<int> Encode(std::string_view text) const;
  // The same as pieces ("▁a", "<0x0A>", ...).
  std::vector<std::string> EncodeAsPieces(std::string_view text) const;

  // LTX2Pipeline._get_gemma_prompt_embeds' tokenizer call: each prompt stripped
  // (StripPythonWhitespace), ids = [<bos>] + Encode(prompt) cut to max_length, left-padded with
  // the pad id (the eos id when the model has no pad) to max_length; mask 1 on the ids.
  PromptTokens EncodePrompts(const std::vector<std::string>& prompts,
                             int64_t max_length = 1024) const;

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  const std::string& IdToPiece(int id) const { return pieces_.at(static_cast<size_t>(id)); }
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }
  int unk_id() const { return unk_id_; }

 private:
  // Piece types of sentencepiece_model.proto.
  enum Type : int { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5,
                    kByte = 6 };

  GemmaTokenizer() = default;
  absl::Status Init();

  std::string Normalize(std::string_view input) const;
  // Length of the user-defined symbol that `text` starts with (0 if none).
  size_t MatchUserDefined(std::string_view text) const;
  int PieceToId(std::string_view piece) const;
  // bpe::Model::Encode on normalised text: (piece, id) with unknown pieces as unk_id.
  std::vector<std::pair<std::string_view, int>> EncodeNormalized(std::string_view normalized) const;
  // Processor output: pieces and ids, unknown pieces as byte pieces (byte fallback) or merged.
  void Encode(std::string_view text, std::vector<int>* ids,
              std::vector<std::string>* pieces) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int> types_;
  std::unordered_map<std::string_view, int> normal_;    // NORMAL, USER_DEFINED, UNUSED
  std::unordered_map<std::string_view, int> reserved_;  // CONTROL, UNKNOWN, BYTE
  std::unordered_set<std::string_view> user_defined_;
  std::vector<size_t> user_defined_lengths_;  // distinct lengths, longest first
  int byte_ids_[256] = {};

  int unk_id_ = -1;
  int bos_id_ = 1;
  int eos_id_ = 2;
  int pad_id_ = -1;
  int model_type_ = 1;
  bool byte_fallback_ = false;
  bool treat_whitespace_as_suffix_ = false;
  std::string precompiled_charsmap_;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_GEMMA_TOKENIZER_H_
