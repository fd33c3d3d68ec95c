// The encoder stage core: GLM-Image's ByT5 glyph encoder (quoted text in the prompt → T5
// embeddings for the DiT), or for an LTX-2 model its Gemma-3 text encoder and connectors
// (services/encoder/ltx2_encoder.h). gRPC-free.
#ifndef DIFFMESH_SERVICES_ENCODER_ENCODER_CORE_H_
#define DIFFMESH_SERVICES_ENCODER_ENCODER_CORE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {

class EncoderCore {
 public:
  struct Options {
    // Built-in model to serve (ignored when model_dir is set).
    std::string model = "glm-image-tiny";
    // A GlmImagePipeline snapshot folder to serve instead of a built-in model, under the
    // snapshot's name (models/glm_image/snapshot.h: SpecFromSnapshot).
    std::string model_dir;
    // Longest glyph text in ByT5 tokens (longer texts are cut, as the reference does).
    int max_sequence_length = 2048;
    // LTX-2: the text encoder and connectors in bf16 on cuda:0 (GLM-Image's glyph encoder stays
    // on the CPU).
    bool cuda = false;
  };
  static absl::StatusOr<std::unique_ptr<EncoderCore>> Create(const Options& options);
  ~EncoderCore();

  // prompt_embeds / negative_prompt_embeds: FLOAT32 [1, T, text_embed_dim] (GLM-Image), or
  // [1, T, video + audio width] (LTX-2, ltx2_encoder.h).
  absl::StatusOr<v1::EncodeResponse> Encode(CallContext& ctx, const v1::EncodeRequest& request);

  // What it serves (EncoderService.Describe): kind "encoder", its model and family, and the
  // width of each embedding it produces.
  v1::StageDescription Describe() const;

 private:
  class Impl;
  explicit EncoderCore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ENCODER_ENCODER_CORE_H_
