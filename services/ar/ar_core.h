// The AR-token stage core: prefill + KV-cache decode of the GLM-Image AR model with continuous
// batching. Requests join the running batch at token boundaries and leave it when done or
// cancelled; each samples with its own seeded generator, so its tokens do not depend on what
// else is in the batch. gRPC-free.
#ifndef DIFFMESH_SERVICES_AR_AR_CORE_H_
#define DIFFMESH_SERVICES_AR_AR_CORE_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {

class ArCore {
 public:
  struct Options {
    // Built-in model to serve (ignored when model_dir is set).
    std::string model = "glm-image-tiny";
    // A GlmImagePipeline snapshot folder to serve instead of a built-in model, under the
    // snapshot's name (models/glm_image/snapshot.h: SpecFromSnapshot).
    std::string model_dir;
    // Sequences decoded together (KV-cache slots).
    int max_batch = 8;
    // Requests waiting for a slot before new ones get RESOURCE_EXHAUSTED.
    int max_queue = 64;
    // Tokens per streamed chunk.
    int chunk_tokens = 32;
    // Largest image side served; 0: the model's (512 for the built-ins, 2048 for snapshots).
    // The AR stage sizes its KV cache for it (prompt + preview + target grid).
    int max_image_size = 0;
    // Run on the GPU (cuda:0, bf16, CUDA-graph decode steps) instead of the CPU (fp32).
    bool cuda = false;
    // Bytes the KV cache may take; 0: exactly max_batch sequences. With a budget, the number
    // of slots is the budget over one sequence's cache, capped at max_batch.
    int64_t kv_cache_memory_bytes = 0;
  };
  static absl::StatusOr<std::unique_ptr<ArCore>> Create(const Options& options);
  ~ArCore();

  // Streams the request's tokens to `on_chunk` (called from the scheduler thread, in order;
  // the last chunk has done = true and the prior-token grid) and returns once the request has
  // finished, failed or been cancelled through `ctx`.
  absl::Status Generate(CallContext& ctx, const v1::ArRequest& request,
                        const std::function<void(const v1::ArTokenChunk&)>& on_chunk);

  const std::string& model() const;

  struct Stats {
    int running = 0;     // sequences holding a KV-cache slot
    int waiting = 0;     // admitted to the queue, not yet prefilled
    int free_slots = 0;  // KV-cache slots free
  };
  Stats stats() const;

 private:
  class Impl;
  explicit ArCore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_AR_AR_CORE_H_
