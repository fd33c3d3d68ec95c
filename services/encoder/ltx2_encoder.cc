#include "services/encoder/ltx2_encoder.h"

#include <ATen/ATen.h>

#include <utility>

#include "common/status/status_macros.h"
#include "models/core/ops.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/snapshot.h"
#include "models/ltx2/snapshot_pipeline.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {

namespace ltx2 = models::ltx2;

struct Ltx2PromptEncoder::State {
  ltx2::Ltx2Spec spec;
  ltx2::Ltx2Models models;  // tokenizer, text encoder and connectors only
};

bool IsLtx2EncoderModel(const std::string& model, const std::string& model_dir) {
  // By model_index.json's class alone: a broken LTX-2 snapshot then fails in its own loader,
  // naming the tensor and file, not in another family's.
  if (!model_dir.empty()) return ltx2::IsLtx2Snapshot(model_dir);
  for (const std::string& name : ltx2::BuiltinModelNames()) {
    if (name == model) return true;
  }
  return false;
}

absl::StatusOr<std::unique_ptr<Ltx2PromptEncoder>> Ltx2PromptEncoder::Create(
    const std::string& model, const std::string& model_dir, bool cuda) {
  if (cuda && !at::hasCUDA()) {
    return absl::FailedPreconditionError("--device cuda: no CUDA device here");
  }
  auto state = std::make_unique<State>();
  ASSIGN_OR_RETURN(state->spec, ltx2::ResolveSpec(model, model_dir));
  const at::Device device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  // Before anything loads: a model too large for the CPU is refused by name.
  RETURN_IF_ERROR(ltx2::CheckDevice(state->spec, device));
  ASSIGN_OR_RETURN(state->models.tokenizer, ltx2::BuildTokenizer(state->spec));
  using ltx2::Ltx2Component;
  ASSIGN_OR_RETURN(
      state->models.text_encoder,
      ltx2::BuildTextEncoder(state->spec, ltx2::ServingDtype(Ltx2Component::kTextEncoder, device),
                             device));
  ASSIGN_OR_RETURN(
      state->models.connectors,
      ltx2::BuildConnectors(state->spec, ltx2::ServingDtype(Ltx2Component::kConnectors, device),
                            device));
  if (cuda) models::UseTensorCoresForFloat32();  // the text encoder's float32 activations
  return std::unique_ptr<Ltx2PromptEncoder>(new Ltx2PromptEncoder(std::move(state)));
}

Ltx2PromptEncoder::Ltx2PromptEncoder(std::unique_ptr<State> state) : state_(std::move(state)) {}
Ltx2PromptEncoder::~Ltx2PromptEncoder() = default;

const std::string& Ltx2PromptEncoder::model_name() const { return state_->spec.name; }

int64_t Ltx2PromptEncoder::embedding_width() const {
  const ltx2::ConnectorsConfig& c = state_->models.connectors->config();
  return c.video.inner_dim() + c.audio.inner_dim();
}

namespace {

// Whether the denoise stages will run the negative branch under the request's guidance: the CFG
// scales as the denoise stage reads them (unset: the model layer's default).
bool NeedsNegativePrompt(const v1::EncodeRequest& request) {
  if (!request.has_guidance()) return true;
  const v1::Guidance& g = request.guidance();
  ltx2::GuidanceOptions o;
  if (g.main().has_cfg_scale()) o.video.cfg = g.main().cfg_scale();
  if (g.audio().has_cfg_scale()) o.audio.cfg = g.audio().cfg_scale();
  return ltx2::UsesNegativePrompt(o);
}

}  // namespace

absl::StatusOr<v1::EncodeResponse> Ltx2PromptEncoder::Encode(CallContext& ctx,
                                                             const v1::EncodeRequest& request) {
  v1::EncodeResponse out;
  const int prompts = NeedsNegativePrompt(request) ? 2 : 1;
  for (int i = 0; i < prompts; ++i) {
    RETURN_IF_ERROR(ctx.Check("encoder"));
    const std::string& prompt = i == 0 ? request.prompt() : request.negative_prompt();
    auto hidden = ltx2::EncodePrompts(state_->models, state_->spec, {prompt});
    ltx2::TextConnectors::Output c = state_->models.connectors->Forward(
        hidden.prompt_embeds, hidden.attention_mask, ltx2::PaddingSide::kLeft);
    // [1, T, video + audio], the attended tokens only (batch 1).
    const at::Tensor keep = c.attention_mask[0].nonzero().squeeze(-1);
    at::Tensor embeds =
        at::cat({c.video_text_embedding.to(at::kFloat), c.audio_text_embedding.to(at::kFloat)}, -1)
            .index_select(1, keep)
            .cpu()
            .contiguous();
    ASSIGN_OR_RETURN(v1::Tensor wire, ToWire(embeds));
    *(i == 0 ? out.mutable_prompt_embeds() : out.mutable_negative_prompt_embeds()) =
        std::move(wire);
  }
  return out;
}

}  // namespace diffmesh
