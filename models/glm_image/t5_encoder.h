// GLM-Image's glyph encoder: transformers' T5EncoderModel (models/t5/modeling_t5.py) over a ByT5
// byte vocabulary, plus the diffusers GlmImagePipeline logic that turns the quoted text of a prompt
// into `prompt_embeds` (get_glyph_texts / _get_glyph_embeds).
#ifndef DIFFMESH_MODELS_GLM_IMAGE_T5_ENCODER_H_
#define DIFFMESH_MODELS_GLM_IMAGE_T5_ENCODER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {

// The fields of text_encoder/config.json the encoder uses.
struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 512;
  int64_t d_kv = 64;
  int64_t d_ff = 2048;
  int64_t num_layers = 6;
  int64_t num_heads = 8;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  // "relu", "gated-gelu", "gated-silu", ...: T5Config derives the two fields below from it
  // ("gated-gelu" means gelu_new); explicit values in config.json win, as in transformers.
  std::string feed_forward_proj = "relu";
  std::string dense_act_fn = "relu";  // relu, gelu, gelu_new/gelu_pytorch_tanh, silu/swish
  bool is_gated_act = false;
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 1;

  static absl::StatusOr<T5Config> FromJson(const nlohmann::json& json);
  static absl::StatusOr<T5Config> FromFile(const std::string& path);
};

// ByT5Tokenizer(text, max_length, truncation=True).input_ids: each UTF-8 byte b becomes b + 3,
// except the special-token spellings "<pad>" (0), "</s>" (1), "<unk>" (2), which also swallow the
// whitespace on either side, and "<extra_id_0>".."<extra_id_124>" (259..383); then </s> unless the
// ids already end with it. With max_length > 0 the ids before that </s> are cut to max_length − 1.
// For text without special spellings: bytes + 3, then 1.
std::vector<int64_t> ByT5Tokenize(const std::string& utf8, int64_t max_length = 0);

// GlmImagePipeline.get_glyph_texts for one prompt: the contents of every '…' span, then every “…”
// span, then every "…" span, then every 「…」 span (grouped by quote style, each group in order of
// appearance, empty contents kept), found the way Python's re.findall does with '([^']*)',
// “([^“”]*)”, "([^"]*)" and 「([^「」]*)」. `prompt` is UTF-8.
std::vector<std::string> GlyphTexts(const std::string& prompt);

// The T5 inputs _get_glyph_embeds builds for one prompt's glyph texts. No texts counts as one empty
// text. Each text is ByT5-tokenized (truncated to max_sequence_length); when the number of texts is
// even, every sequence gets one leading <pad> (the reference computes `(len(input_ids) + 1) % 2` on
// the list of sequences, not on a sequence); sequences are then right-padded with <pad> to the
// longest, and the mask is 1 on every non-padding position, including that leading <pad>.
struct GlyphInputs {
  at::Tensor input_ids;       // int64 [num_texts, L]
  at::Tensor attention_mask;  // int64 [num_texts, L]
};
GlyphInputs PrepareGlyphInputs(const std::vector<std::string>& glyph_texts,
                               int64_t max_sequence_length = 2048, int64_t pad_token_id = 0);

class T5Encoder {
 public:
  // Exactly the parameters of a transformers T5EncoderModel checkpoint: `shared.weight` (the token
  // embedding, which encoder.embed_tokens ties to and the checkpoint stores once), then per block
  // `encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight` (block 0 adds
  // `relative_attention_bias.weight` [buckets, heads]), `layer.0.layer_norm.weight`,
  // `layer.1.DenseReluDense.{wi_0,wi_1,wo | wi,wo}.weight`, `layer.1.layer_norm.weight`, and
  // `encoder.final_layer_norm.weight`.
  static std::vector<ParamSpec> Params(const T5Config& config);

  // Takes weights already checked against Params(config).
  static absl::StatusOr<std::unique_ptr<T5Encoder>> Create(const T5Config& config,
                                                           WeightMap weights);

  // Reads `component_dir`/config.json and its checkpoint, floating-point weights as `dtype`. A
  // checkpoint that stores the tied embedding as `encoder.embed_tokens.weight` (with or without
  // `shared.weight`) is accepted, as transformers' tying does.
  static absl::StatusOr<std::unique_ptr<T5Encoder>> Load(const std::string& component_dir,
                                                         at::ScalarType dtype = at::kFloat);

  static absl::StatusOr<std::unique_ptr<T5Encoder>> CreateSeeded(const T5Config& config,
                                                                 uint64_t seed);

  // T5EncoderModel(input_ids, attention_mask).last_hidden_state. input_ids int64 [B, S];
  // attention_mask [B, S] (1 = attend, 0 = padding; any integer or float dtype) or undefined for
  // all ones → [B, S, d_model] in the weights' dtype. Norms compute their statistics in fp32 and
  // the softmax runs in fp32, as the reference.
  at::Tensor Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {}) const;

  // GlmImagePipeline._get_glyph_embeds for a batch of prompts: for each prompt, GlyphTexts →
  // PrepareGlyphInputs → Forward, keeping the hidden states of the mask-1 positions (texts in
  // order, concatenated) as [1, n_i, d_model]; then all prompts are left-padded with zeros to the
  // longest n and stacked → [num_prompts, max n_i, d_model] in the weights' dtype. A prompt without
  // quoted text yields the encoding of "" (ids [</s>]), i.e. n_i = 1. The pipeline's negative
  // prompt is "", so EncodeGlyphs({""}) is its negative_prompt_embeds.
  at::Tensor EncodeGlyphs(const std::vector<std::string>& prompts,
                          int64_t max_sequence_length = 2048) const;

  const T5Config& config() const { return config_; }
  const WeightMap& weights() const { return weights_; }

  // _relative_position_bucket for an encoder (bidirectional): int64 [S, S] with entry (i, j) the
  // bucket of j − i. Exposed for tests.
  static at::Tensor RelativePositionBuckets(int64_t length, int64_t num_buckets,
                                            int64_t max_distance);

 private:
  T5Encoder(T5Config config, WeightMap weights)
      : config_(std::move(config)), weights_(std::move(weights)) {}

  at::Tensor Act(const at::Tensor& x) const;

  T5Config config_;
  WeightMap weights_;
};

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_T5_ENCODER_H_
