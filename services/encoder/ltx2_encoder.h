// The encoder stage for LTX-2 models: the Gemma-3 text encoder with its tokenizer, then the
// text connectors. ATen-free header.
//
// The connectors run here, not in the denoise stage, because their output is what crosses the
// wire: [T, video width + audio width] (LTX-2.3: 4096 + 2048) per token, against the text
// encoder's stacked hidden states [T, hidden · (layers + 1)] (Gemma-3 12B: 3840 · 49), about 30
// times more. Output: prompt_embeds / negative_prompt_embeds FLOAT32 [1, T, video + audio width],
// the video and audio embeddings concatenated on the last axis, for the tokens the connectors
// leave attended (every token with learnable registers; the valid ones without): the denoise
// stage attends to all of them, which equals the reference's masked attention.
#ifndef DIFFMESH_SERVICES_ENCODER_LTX2_ENCODER_H_
#define DIFFMESH_SERVICES_ENCODER_LTX2_ENCODER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {

// Whether `model` (or, when set, the snapshot in `model_dir`) is an LTX-2 model.
bool IsLtx2EncoderModel(const std::string& model, const std::string& model_dir);

class Ltx2PromptEncoder {
 public:
  // `cuda`: the text encoder and the connectors in bf16 on cuda:0 (the output stays float32 on
  // the wire); FAILED_PRECONDITION where no CUDA device is present. Else float32 on the CPU.
  static absl::StatusOr<std::unique_ptr<Ltx2PromptEncoder>> Create(const std::string& model,
                                                                   const std::string& model_dir,
                                                                   bool cuda = false);
  ~Ltx2PromptEncoder();
  const std::string& model_name() const;
  // The last dimension of prompt_embeds / negative_prompt_embeds: video + audio width.
  int64_t embedding_width() const;
  // Not thread-safe: the caller serialises calls.
  absl::StatusOr<v1::EncodeResponse> Encode(CallContext& ctx, const v1::EncodeRequest& request);

 private:
  struct State;
  explicit Ltx2PromptEncoder(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ENCODER_LTX2_ENCODER_H_
