#include "models/ltx2/lora.h"

#include <cmath>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/weights.h"

namespace diffmesh::models::ltx2 {
namespace {

constexpr char kOriginalPrefix[] = "diffusion_model.";
constexpr char kDiffusersPrefix[] = "transformer.";

// Original (single-file checkpoint) module names → diffusers names, applied in this order as
// plain substring replacements, as diffusers' _convert_non_diffusers_ltx2_lora_to_diffusers does
// (its table equals scripts/convert_ltx2_to_diffusers.py's for the transformer).
constexpr std::pair<const char*, const char*> kRenames[] = {
    {"patchify_proj", "proj_in"},
    {"audio_patchify_proj", "audio_proj_in"},
    {"av_ca_video_scale_shift_adaln_single", "av_cross_attn_video_scale_shift"},
    {"av_ca_a2v_gate_adaln_single", "av_cross_attn_video_a2v_gate"},
    {"av_ca_audio_scale_shift_adaln_single", "av_cross_attn_audio_scale_shift"},
    {"av_ca_v2a_gate_adaln_single", "av_cross_attn_audio_v2a_gate"},
    {"scale_shift_table_a2v_ca_video", "video_a2v_cross_attn_scale_shift_table"},
    {"scale_shift_table_a2v_ca_audio", "audio_a2v_cross_attn_scale_shift_table"},
    {"q_norm", "norm_q"},
    {"k_norm", "norm_k"},
    {"audio_prompt_adaln_single", "audio_prompt_adaln"},
    {"prompt_adaln_single", "prompt_adaln"},
};
// Then, at the start of the name only (the names above contain "adaln_single" too).
constexpr std::pair<const char*, const char*> kPrefixRenames[] = {
    {"adaln_single.", "time_embed."},
    {"audio_adaln_single.", "audio_time_embed."},
};

// What a key holds of its module.
enum class Part { kDown, kUp, kAlpha };
constexpr std::pair<const char*, Part> kSuffixes[] = {
    {".lora_A.weight", Part::kDown},    {".lora_B.weight", Part::kUp},
    {".lora_down.weight", Part::kDown}, {".lora_up.weight", Part::kUp},
    {".alpha", Part::kAlpha},
};

// How tensor parallelism splits a layer's weight (transformer_block.cc).
enum class Split { kNone, kColumn, kRow };
Split SplitOf(const std::string& layer) {
  if (!absl::StartsWith(layer, "transformer_blocks.")) return Split::kNone;
  if (absl::EndsWith(layer, ".to_out.0") || absl::EndsWith(layer, "ff.net.2")) return Split::kRow;
  return Split::kColumn;  // to_q, to_k, to_v, to_gate_logits, ff.net.0.proj
}

struct Pending {
  at::Tensor down, up, alpha;
  std::string down_key, up_key;
};

}  // namespace

std::string LoraModuleName(const std::string& module) {
  if (absl::StartsWith(module, kDiffusersPrefix)) {
    return module.substr(sizeof(kDiffusersPrefix) - 1);
  }
  if (!absl::StartsWith(module, kOriginalPrefix)) return "";
  std::string name = module.substr(sizeof(kOriginalPrefix) - 1);
  for (const auto& [from, to] : kRenames) name = absl::StrReplaceAll(name, {{from, to}});
  for (const auto& [from, to] : kPrefixRenames) {
    if (absl::StartsWith(name, from)) {
      name = absl::StrCat(to, name.substr(std::string(from).size()));
      break;
    }
  }
  return name;
}

absl::StatusOr<std::unique_ptr<Ltx2Lora>> Ltx2Lora::Load(const std::string& path,
                                                         const Ltx2TransformerConfig& config,
                                                         const Ltx2LoraOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  // Views of the mapping (no copy): FromTensors converts each to the model's dtype and device
  // while the file is open.
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, view] : file->tensors()) {
    tensors[name] = at::from_blob(const_cast<uint8_t*>(view.data), view.shape,
                                  at::TensorOptions().dtype(ToScalarType(view.dtype)));
  }
  return FromTensors(tensors, config, options, path);
}

absl::StatusOr<std::unique_ptr<Ltx2Lora>> Ltx2Lora::FromTensors(
    const std::map<std::string, at::Tensor>& tensors, const Ltx2TransformerConfig& config,
    const Ltx2LoraOptions& options, const std::string& source) {
  auto bad = [&](const std::string& key, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA ", source, ": '", key, "' ", what));
  };
  // The Linear layers of the transformer: prefix → weight shape [out, in].
  std::map<std::string, std::vector<int64_t>> linears;
  for (const ParamSpec& spec : Ltx2Transformer::Params(config)) {
    if (spec.shape.size() == 2 && absl::EndsWith(spec.name, ".weight")) {
      linears[spec.name.substr(0, spec.name.size() - 7)] = spec.shape;
    }
  }
  if (tensors.empty()) return absl::InvalidArgumentError(absl::StrCat("LoRA ", source, ": empty"));
  std::map<std::string, Pending> pending;     // by layer prefix
  std::map<std::string, std::string> origin;  // layer → the module name that first named it
  for (const auto& [key, tensor] : tensors) {
    const char* suffix = nullptr;
    Part part = Part::kDown;
    for (const auto& [s, p] : kSuffixes) {
      if (absl::EndsWith(key, s)) {
        suffix = s;
        part = p;
        break;
      }
    }
    if (suffix == nullptr) {
      return bad(key,
                 "is not a LoRA matrix or alpha (.lora_A/.lora_B/.lora_down/.lora_up"
                 ".weight, .alpha); DoRA scales and LoRA biases are not supported");
    }
    const std::string module = key.substr(0, key.size() - std::string(suffix).size());
    const std::string layer = LoraModuleName(module);
    if (layer.empty()) {
      return bad(key,
                 absl::StrCat("has neither the '", kOriginalPrefix, "' nor the '", kDiffusersPrefix,
                              "' prefix of a transformer LoRA (LoRAs of "
                              "the text connectors are not supported)"));
    }
    auto linear = linears.find(layer);
    if (linear == linears.end()) {
      return bad(key, absl::StrCat("targets '", layer,
                                   "', which is not a Linear layer of the LTX-2 transformer"));
    }
    auto [it, inserted] = origin.emplace(layer, module);
    if (!inserted && it->second != module) {
      return bad(key,
                 absl::StrCat("targets '", layer, "' again (also named as '", it->second, "')"));
    }
    Pending& p = pending[layer];
    if (part == Part::kAlpha) {
      if (tensor.numel() != 1) return bad(key, "is an alpha with more than one element");
      p.alpha = tensor;
    } else if (tensor.dim() != 2) {
      return bad(key, absl::StrCat("has ", tensor.dim(), " dimensions, not 2"));
    } else if (part == Part::kDown) {
      if (p.down.defined()) return bad(key, absl::StrCat("repeats ", p.down_key));
      p.down = tensor;
      p.down_key = key;
    } else {
      if (p.up.defined()) return bad(key, absl::StrCat("repeats ", p.up_key));
      p.up = tensor;
      p.up_key = key;
    }
  }
  std::unordered_map<std::string, LoraLayer> layers;
  for (auto& [layer, p] : pending) {
    const std::string& module = origin[layer];
    if (!p.down.defined() || !p.up.defined()) {
      return bad(module, absl::StrCat("has ", p.down.defined() ? "lora_A" : "no lora_A", " and ",
                                      p.up.defined() ? "lora_B" : "no lora_B",
                                      ": both matrices are needed"));
    }
    const std::vector<int64_t>& shape = linears[layer];  // [out, in]
    const int64_t rank = p.down.size(0);
    if (rank < 1 || p.up.size(1) != rank) {
      return bad(p.up_key,
                 absl::StrCat("has rank ", p.up.size(1), " but ", p.down_key, " has rank ", rank));
    }
    if (p.down.size(1) != shape[1]) {
      return bad(p.down_key, absl::StrCat("is [", rank, ", ", p.down.size(1), "] but layer '",
                                          layer, "' takes ", shape[1], " inputs"));
    }
    if (p.up.size(0) != shape[0]) {
      return bad(p.up_key, absl::StrCat("is [", p.up.size(0), ", ", rank, "] but layer '", layer,
                                        "' has ", shape[0], " outputs"));
    }
    LoraLayer l;
    if (p.alpha.defined()) {
      const double alpha = p.alpha.to(at::kDouble).item<double>();
      if (!std::isfinite(alpha)) return bad(module + ".alpha", "is not finite");
      l.scale = alpha / static_cast<double>(rank);
    }
    const Split split = SplitOf(layer);
    const int64_t split_size = split == Split::kColumn ? shape[0] : shape[1];
    if (split != Split::kNone && split_size % options.tp.size != 0) {
      return bad(module, absl::StrCat("cannot be split over ", options.tp.size,
                                      " tensor-parallel ranks (", split_size, ")"));
    }
    // Own storage in the model's dtype and device: never a view of the file's mapping, which
    // closes after Load.
    auto own = [&](const at::Tensor& t) {
      at::Tensor out = t.to(options.device, options.dtype);
      return out.data_ptr() == t.data_ptr() ? out.clone() : out.contiguous();
    };
    l.down = own(split == Split::kRow ? SliceForRank(p.down, 1, options.tp) : p.down);
    l.up = own(split == Split::kColumn ? SliceForRank(p.up, 0, options.tp) : p.up);
    layers.emplace(layer, std::move(l));
  }
  return std::unique_ptr<Ltx2Lora>(
      new Ltx2Lora(std::move(layers), source, options.tp, options.dtype, options.device));
}

const LoraLayer* Ltx2Lora::Find(const std::string& prefix) const {
  auto it = layers_.find(prefix);
  return it == layers_.end() ? nullptr : &it->second;
}

at::Tensor LoraCall::Add(const at::Tensor& y, const std::string& prefix,
                         const at::Tensor& x) const {
  const LoraLayer* l = Find(prefix);
  if (l == nullptr) return y;
  return y.add(at::linear(at::linear(x, l->down), l->up), strength * l->scale);
}

}  // namespace diffmesh::models::ltx2
