// Gemma-3's text model, LTX-2's text encoder: transformers' `Gemma3TextModel`
// (models/gemma3/modeling_gemma3.py), which is also the language model inside
// `Gemma3ForConditionalGeneration`, run for every layer's hidden state; plus LTX-2's packing of
// those states (LTX2Pipeline._get_gemma_prompt_embeds). Sliding-window and global layers with
// their own RoPE bases, q/k RMSNorm, Gemma RMSNorm (1 + w), sandwich norms, grouped-query
// attention, GELU-tanh gated MLP, optional attention logit soft-capping. Parameter names are the
// checkpoint's, with whatever prefix the checkpoint puts before `embed_tokens.weight`.
#ifndef DIFFMESH_MODELS_LTX2_GEMMA3_H_
#define DIFFMESH_MODELS_LTX2_GEMMA3_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "models/ltx2/gemma_tokenizer.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

// One layer type's rotary embedding: theta and the "default" or "linear" (inv_freq / factor)
// rope type.
struct Gemma3Rope {
  double theta = 10000.0;
  std::string rope_type = "default";
  double factor = 1.0;
};

// The text config: config.json of a Gemma3TextModel, or the "text_config" of a
// Gemma3ForConditionalGeneration config (read from there when present). Both the transformers 5
// form (`layer_types`, `rope_parameters.{full,sliding}_attention`) and the hub's legacy form
// (`sliding_window_pattern`, `rope_theta` + `rope_scaling`, `rope_local_base_freq`) are read;
// missing keys take Gemma3TextConfig's defaults.
struct Gemma3Config {
  int64_t vocab_size = 262208;
  int64_t hidden_size = 2304;
  int64_t intermediate_size = 9216;
  int64_t num_hidden_layers = 26;
  int64_t num_attention_heads = 8;
  int64_t num_key_value_heads = 4;
  int64_t head_dim = 256;
  std::string hidden_activation = "gelu_pytorch_tanh";
  double rms_norm_eps = 1e-6;
  double query_pre_attn_scalar = 256;
  int64_t sliding_window = 4096;
  int64_t sliding_window_pattern = 6;  // legacy: layer i global iff (i + 1) % pattern == 0
  std::optional<double> attn_logit_softcapping;
  bool attention_bias = false;
  bool use_bidirectional_attention = false;
  int64_t pad_token_id = 0;
  int64_t bos_token_id = 2;
  std::vector<std::string> layer_types;  // "sliding_attention" / "full_attention" per layer
  Gemma3Rope full_rope{1000000.0, "default", 1.0};
  Gemma3Rope sliding_rope{10000.0, "default", 1.0};

  static absl::StatusOr<Gemma3Config> FromJson(const nlohmann::json& json);
  static absl::StatusOr<Gemma3Config> FromFile(const std::string& path);
};

class Gemma3TextModel {
 public:
  // Gemma3TextModel's parameters, each name preceded by `prefix` ("" for a Gemma3TextModel
  // checkpoint, "language_model.model." for a Gemma3ForConditionalGeneration one):
  // embed_tokens.weight, norm.weight, layers.{i}.{input_layernorm, post_attention_layernorm,
  // pre_feedforward_layernorm, post_feedforward_layernorm}.weight,
  // layers.{i}.self_attn.{q,k,v,o}_proj.weight (+ .bias with attention_bias),
  // layers.{i}.self_attn.{q,k}_norm.weight, layers.{i}.mlp.{gate,up,down}_proj.weight.
  static std::vector<ParamSpec> Params(const Gemma3Config& config, const std::string& prefix = "");

  // Takes weights checked against Params(config) without a prefix.
  static absl::StatusOr<std::unique_ptr<Gemma3TextModel>> Create(const Gemma3Config& config,
                                                                 WeightMap weights);
  // Reads `model_dir`/config.json and the checkpoint there (one file or sharded). The language
  // model's prefix is found from where `embed_tokens.weight` is ("", "model.",
  // "language_model.model.", "model.language_model."); other tensors of a multimodal checkpoint
  // (vision tower, projector, lm_head) are ignored.
  static absl::StatusOr<std::unique_ptr<Gemma3TextModel>> Load(const std::string& model_dir,
                                                               at::ScalarType dtype = at::kFloat);
  static absl::StatusOr<std::unique_ptr<Gemma3TextModel>> CreateSeeded(const Gemma3Config& config,
                                                                       uint64_t seed);

  // text_encoder(input_ids, attention_mask, output_hidden_states=True).hidden_states:
  // input_ids int64 [B, T], attention_mask [B, T] (1 = token; undefined = all ones) → L + 1
  // tensors [B, T, hidden] in the weights' dtype: the scaled embeddings, the outputs of layers
  // 0..L−2, and the final norm of layer L−1's output. Positions are arange(T) for every row,
  // padding included, as a plain transformers forward does. Padded query rows (no key allowed)
  // get the eager implementation's uniform attention over all keys.
  std::vector<at::Tensor> Forward(const at::Tensor& input_ids,
                                  const at::Tensor& attention_mask = {}) const;

  // torch.stack(hidden_states, -1).flatten(2, 3): [B, T, hidden·(L+1)] with the layer index
  // fastest (index d·(L+1) + l), the connectors' input layout.
  static at::Tensor PackHiddenStates(const std::vector<at::Tensor>& hidden_states);

  // LTX2Pipeline._get_gemma_prompt_embeds after tokenisation: Forward on the tokens, then
  // PackHiddenStates. Returns prompt_embeds [B, T, hidden·(L+1)] in the weights' dtype and the
  // int64 attention mask [B, T], both on the weights' device.
  struct PromptEmbeds {
    at::Tensor prompt_embeds;
    at::Tensor attention_mask;
  };
  PromptEmbeds EncodePrompts(const PromptTokens& tokens) const;

  const Gemma3Config& config() const { return config_; }
  const WeightMap& weights() const { return weights_; }

 private:
  Gemma3TextModel(Gemma3Config config, WeightMap weights);

  Gemma3Config config_;
  WeightMap weights_;
  at::Tensor full_inv_freq_;     // [head_dim / 2] float32
  at::Tensor sliding_inv_freq_;  // [head_dim / 2] float32
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_GEMMA3_H_
