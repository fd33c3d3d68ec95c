// The model-family seam of the denoise stage: DenoiseCore forwards every call to one
// DenoiseEngine, chosen at Create from the model it serves (GLM-Image's CFG-parallel group in
// denoise_core.cc, LTX-2's audio-video pipeline in ltx2_denoise.cc). An engine owns its
// networks and its group; the contracts are DenoiseCore's (denoise_core.h).
#ifndef DIFFMESH_SERVICES_DENOISE_DENOISE_ENGINE_H_
#define DIFFMESH_SERVICES_DENOISE_DENOISE_ENGINE_H_

#include <functional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/call/call_context.h"
#include "common/call/input_queue.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {

class DenoiseEngine {
 public:
  virtual ~DenoiseEngine() = default;
  virtual absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                               const std::function<void(const v1::DenoiseEvent&)>& on_event) = 0;
  virtual absl::Status DenoiseStreamed(
      CallContext& ctx, InputQueue<v1::DenoiseInput>& inputs,
      const std::function<void(const v1::DenoiseEvent&)>& on_event) = 0;
  virtual absl::Status RunWorker() = 0;
  virtual int rank() const = 0;
  // What it serves (DenoiseService.Describe): the stage kinds, the model and its family, the
  // embedding widths it takes, its size granularity and step limit.
  virtual v1::StageDescription Describe() const = 0;
};

// Rank 0: `on_event` with `queued` (the request's wait for the group, DenoiseGroup::Send, which
// returns once this request holds it) written into the Result as queue_seconds. The returned
// function refers to `on_event`: use it within its lifetime.
inline std::function<void(const v1::DenoiseEvent&)> WithQueueTime(
    const std::function<void(const v1::DenoiseEvent&)>& on_event, absl::Duration queued) {
  return [&on_event, seconds = absl::ToDoubleSeconds(queued)](const v1::DenoiseEvent& e) {
    if (!e.has_result()) {
      on_event(e);
      return;
    }
    v1::DenoiseEvent timed = e;
    timed.mutable_result()->set_queue_seconds(seconds);
    on_event(timed);
  };
}

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_DENOISE_ENGINE_H_
