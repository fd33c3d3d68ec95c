// Byte-level BPE tokenizer read from a Hugging Face `tokenizers` tokenizer.json, as GLM-4 and
// GLM-Image's processor/tokenizer.json define it, encoding and decoding exactly as the `tokenizers`
// library does (checked against its outputs in tests/data/tokenizer).
//
// Pipeline of Encode, in the library's order:
//   1. added tokens with normalized=false are cut out of the raw text (leftmost-longest match,
//      honouring lstrip / rstrip / single_word);
//   2. the rest is normalized (null, NFC, NFD, NFKC, NFKD or a Sequence of them), then added
//      tokens with normalized=true are cut out of it the same way;
//   3. each remaining piece is pre-tokenized: Split steps on one of the known GPT-style regexes
//      (behavior Isolated), then ByteLevel (optional prefix space, optional GPT-2 regex, bytes
//      mapped to the GPT-2 byte→unicode alphabet);
//   4. each pre-token is merged by the BPE model (lowest merge rank first, leftmost on ties);
//   5. with add_special_tokens the post_processor adds its tokens (TemplateProcessing,
//      Roberta/BertProcessing, ByteLevel (ids unchanged), or a Sequence of them).
// The Split regexes are not run through a regex engine: std::regex lacks \p{..} and RE2 lacks
// the look-ahead of `\s+(?!\S)`. A hand-written scanner reproduces Oniguruma's backtracking
// result for each supported pattern, using ICU character properties (see bpe_tokenizer.cc).
// Anything in a tokenizer.json outside this subset is refused at load with an error naming the
// file and the field, rather than tokenized differently.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_BPE_TOKENIZER_H_
#define DIFFMESH_MODELS_GLM_IMAGE_BPE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh::models::glm_image {

class BpeTokenizer {
 public:
  // Reads a tokenizer.json file; errors name `path`.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromFile(const std::string& path);
  // Parses tokenizer.json text; errors name `source` (a path or a description).
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromJson(const std::string& json_text,
                                                                const std::string& source);

  // Token ids of UTF-8 `text`, as `tokenizers`' Tokenizer.encode(text, add_special_tokens).ids.
  // INVALID_ARGUMENT when `text` is not valid UTF-8 (a Python str always is).
  absl::StatusOr<std::vector<int64_t>> Encode(std::string_view text,
                                              bool add_special_tokens = true) const;
  // Text of `ids`, as Tokenizer.decode(ids, skip_special_tokens): unknown ids are dropped and
  // byte sequences that are not valid UTF-8 become U+FFFD (maximal-subpart replacement).
  std::string Decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  // Added tokens first, then the model vocabulary.
  std::optional<int64_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int64_t id) const;
  // Distinct tokens of the model vocabulary and the added tokens together
  // (get_vocab_size(with_added_tokens=True)).
  int64_t VocabSize() const;
  // Whether `id` is an added token marked special (skipped by Decode(..., true)).
  bool IsSpecial(int64_t id) const;

  // Implementation types, public only so that the .cc's helpers can name them.
  struct AddedToken {
    int64_t id = 0;
    std::string content;
    bool special = false;
    bool lstrip = false;
    bool rstrip = false;
    bool single_word = false;
    bool normalized = false;
  };
  // Byte trie over added-token patterns; a node's `token` is an index into added_ or -1.
  struct TrieNode {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t token = -1;
  };
  enum class SplitPattern { kGpt4, kGpt4SingleDigit, kGpt2 };
  enum class NormalizerKind { kNfc, kNfd, kNfkc, kNfkd };
  struct PostStep {
    // TemplateProcessing's single template, Roberta/Bert's cls + $A + sep: ids before and after
    // the sequence. ByteLevel post-processing changes only offsets and is dropped at load.
    std::vector<int64_t> before;
    std::vector<int64_t> after;
  };

 private:
  BpeTokenizer() = default;

  // A piece of the input: text still to tokenize, or an added token's id.
  struct Piece {
    std::string text;
    int64_t added_id = -1;
  };
  void SplitOnAddedTokens(const std::vector<TrieNode>& trie, std::vector<Piece>& pieces) const;
  std::string Normalize(std::string_view text) const;
  void PreTokenize(std::string_view text, std::vector<std::string>& words) const;
  void EncodeWord(std::string_view word, std::vector<int64_t>& ids) const;

  // Model.
  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<int64_t, std::string> vocab_r_;
  // (left id, right id) → (rank, merged id).
  std::unordered_map<uint64_t, std::pair<int32_t, int64_t>> merges_;
  std::optional<int64_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int64_t, 256> byte_fallback_ids_{};  // <0xXX> ids, -1 where absent

  // Added vocabulary.
  std::vector<AddedToken> added_;
  std::unordered_map<std::string, int64_t> added_by_content_;
  std::unordered_map<int64_t, size_t> added_by_id_;  // → index into added_
  std::unordered_set<std::string> special_contents_;
  std::vector<TrieNode> raw_trie_;         // normalized=false tokens, matched on the raw text
  std::vector<TrieNode> normalized_trie_;  // normalized=true tokens, matched after normalizing

  // Normalizer, pre-tokenizer, post-processor.
  std::vector<NormalizerKind> normalizers_;
  std::vector<SplitPattern> splits_;  // Split steps before ByteLevel
  bool byte_level_prefix_space_ = false;
  bool byte_level_regex_ = false;
  std::vector<PostStep> post_;

  // Decoder: ByteLevel (true) or none (tokens joined by spaces).
  bool byte_level_decoder_ = true;
  std::array<std::string, 256> byte_chars_;                 // byte → its alphabet char (UTF-8)
  std::unordered_map<char32_t, unsigned char> char_bytes_;  // alphabet char → byte
  std::array<int64_t, 256> byte_char_ids_{};                // vocab id of byte_chars_[b] or -1
};

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_BPE_TOKENIZER_H_
