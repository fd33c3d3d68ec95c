// A denoise service started with --role decode (DenoiseCore::Options::Role::kDecode): it serves
// a model's "decode" stage kind (and, where the model has a latent upsampler, "upsample"), on one
// device, without a DiT and without a denoise group. A deployment runs it apart from the group
// (the pipeline config's decode stage names its service) so that the group denoises the next
// request while this one decodes, and the decoders' memory is not the DiT's. Denoise requests
// are FAILED_PRECONDITION. ATen-free header.
#ifndef DIFFMESH_SERVICES_DENOISE_DECODE_ENGINE_H_
#define DIFFMESH_SERVICES_DENOISE_DECODE_ENGINE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "services/denoise/denoise_core.h"
#include "services/denoise/denoise_engine.h"

namespace diffmesh {

// The decoders of options.model (or of the snapshot in options.model_dir), on the CPU or, with
// options.cuda, on cuda:0. options.parallel must be a single rank.
absl::StatusOr<std::unique_ptr<DenoiseEngine>> CreateDecodeEngine(
    const DenoiseCore::Options& options);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_DECODE_ENGINE_H_
