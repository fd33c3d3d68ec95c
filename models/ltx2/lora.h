// LoRA adapters of the LTX-2 transformer (e.g. the distilled LoRA that the reference two-stage
// pipeline runs stage 2 with), applied at run time as a low-rank side path of the adapted
// Linear layers instead of merged into their weights:
//
//   y = W x + b + strength · scale · B (A x)      A = lora_A [rank, in], B = lora_B [out, rank]
//
// so that one transformer serves calls with and without an adapter (Ltx2ForwardOptions::lora
// picks it per call) and no second copy of the weights exists. README.md ("LoRA adapters")
// gives the file formats and the reasons.
//
// Tensor parallelism: an adapter is loaded for one rank of the model's tp group and keeps that
// rank's slices, split as the layer's weight is (transformer_block.cc): column-parallel layers
// (to_q, to_k, to_v, to_gate_logits, ff.net.0.proj) keep A whole and their rows of B;
// row-parallel layers (to_out.0, ff.net.2) keep their columns of A and B whole, so the partial
// products B(A_r x_r) sum over the ranks in the layer's one all-reduce, with W_r x_r. Layers
// outside the blocks are not split.
#ifndef DIFFMESH_MODELS_LTX2_LORA_H_
#define DIFFMESH_MODELS_LTX2_LORA_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/status/statusor.h"
#include "models/ltx2/transformer.h"
#include "models/ltx2/transformer_parallel.h"

namespace diffmesh::models::ltx2 {

// The update of one Linear layer, in the model's dtype and device (this rank's slices).
struct LoraLayer {
  at::Tensor down;     // lora_A [rank, in] (row-parallel: [rank, in/tp])
  at::Tensor up;       // lora_B [out, rank] (column-parallel: [out/tp, rank])
  double scale = 1.0;  // alpha / rank; 1 when the file has no alpha for the layer
};

struct Ltx2LoraOptions {
  at::ScalarType dtype = at::kFloat;  // the model's (Ltx2Transformer::dtype)
  at::Device device = at::kCPU;       // the model's
  TpSlice tp;                         // the model's rank in its tp group (SliceOf(tp))
};

class Ltx2Lora {
 public:
  // Reads the safetensors file `path`. Keys in either style:
  //  * released / ComfyUI / ltx-core: `diffusion_model.<original module>.lora_A.weight`,
  //    `.lora_B.weight`, optionally `<module>.alpha` (a scalar); original module names as in the
  //    single-file checkpoints (patchify_proj, adaln_single, ...), mapped to the diffusers names
  //    as diffusers does;
  //  * diffusers / PEFT: `transformer.<diffusers module>.lora_A.weight` / `.lora_B.weight`.
  // `lora_down` / `lora_up` are taken for lora_A / lora_B. Every key must belong to a Linear
  // layer of `config`'s transformer (Ltx2Transformer::Params) with both matrices, ranks that
  // agree and in/out sizes of the layer; anything else (another module, the text connectors'
  // keys, DoRA scales, LoRA biases) is INVALID_ARGUMENT naming the key and the file.
  static absl::StatusOr<std::unique_ptr<Ltx2Lora>> Load(const std::string& path,
                                                        const Ltx2TransformerConfig& config,
                                                        const Ltx2LoraOptions& options = {});
  // The same from tensors already read; `source` names them in errors.
  static absl::StatusOr<std::unique_ptr<Ltx2Lora>> FromTensors(
      const std::map<std::string, at::Tensor>& tensors, const Ltx2TransformerConfig& config,
      const Ltx2LoraOptions& options, const std::string& source);

  // The update of the layer whose weight is `prefix`.weight, or null when it has none.
  const LoraLayer* Find(const std::string& prefix) const;
  size_t num_layers() const { return layers_.size(); }
  const std::string& source() const { return source_; }
  TpSlice tp() const { return tp_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

 private:
  Ltx2Lora(std::unordered_map<std::string, LoraLayer> layers, std::string source, TpSlice tp,
           at::ScalarType dtype, at::Device device)
      : layers_(std::move(layers)),
        source_(std::move(source)),
        tp_(tp),
        dtype_(dtype),
        device_(device) {}

  std::unordered_map<std::string, LoraLayer> layers_;  // by layer prefix
  std::string source_;
  TpSlice tp_;
  at::ScalarType dtype_;
  at::Device device_;
};

// The diffusers module name of a LoRA key's module: `diffusion_model.`-prefixed keys renamed
// from the original names, `transformer.`-prefixed ones as they are; nullopt-like empty string
// for other prefixes. Exposed for tests.
std::string LoraModuleName(const std::string& module);

// The adapter of one forward call (Ltx2ForwardOptions::lora, lora_strength).
struct LoraCall {
  const Ltx2Lora* lora = nullptr;
  double strength = 1.0;

  // The layer's update when this call applies one to `prefix`, else null.
  const LoraLayer* Find(const std::string& prefix) const {
    return lora == nullptr || strength == 0.0 ? nullptr : lora->Find(prefix);
  }
  // y + strength·scale·B(A x) for layer `prefix` (y itself when it has no update). `y` is the
  // layer's output (or, row-parallel, this rank's partial product before the all-reduce).
  at::Tensor Add(const at::Tensor& y, const std::string& prefix, const at::Tensor& x) const;
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_LORA_H_
