#include "services/denoise/denoise_service.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "common/metrics/families.h"
#include "common/metrics/metrics.h"
#include "common/process/heap_trim.h"
#include "common/rpc/bidi_streaming_call.h"
#include "common/rpc/stage_token.h"
#include "common/rpc/streaming_call.h"
#include "common/status/grpc_status.h"
#include "services/stage_common/gpu_memory.h"

namespace diffmesh {

struct DenoiseService::Metrics {
  Metrics(prometheus::Registry& registry, const std::string& model)
      : calls(registry),
        denoise(registry),
        step_duration(denoise.step_duration.Add({{"model", model}}, metrics::StepBuckets())) {}

  metrics::StageServiceFamilies calls;
  metrics::DenoiseFamilies denoise;
  prometheus::Histogram& step_duration;
};

namespace {

// Times the steps of one call from its events. Step k > 1 took the time since step k - 1's
// event. Step 1 is measured back from the end of the loop: the result's denoise_seconds runs
// from the loop's set-up to the last step, so that set-up is left out of step 1 and so is the
// wait for the group (it runs one request at a time) before it.
class StepTimer {
 public:
  explicit StepTimer(prometheus::Histogram& steps) : steps_(steps) {}

  void OnEvent(const v1::DenoiseEvent& e) {
    const absl::Time now = absl::Now();
    if (e.has_progress()) {
      if (e.progress().done() == 1) {
        first_step_ = now;
      } else if (last_step_ != absl::InfinitePast()) {
        steps_.Observe(absl::ToDoubleSeconds(now - last_step_));
      }
      last_step_ = now;
    } else if (e.has_result() && e.result().denoise_seconds() > 0 &&
               first_step_ != absl::InfinitePast()) {
      const absl::Time loop_start = last_step_ - absl::Seconds(e.result().denoise_seconds());
      steps_.Observe(std::max(0.0, absl::ToDoubleSeconds(first_step_ - loop_start)));
    }
  }

 private:
  prometheus::Histogram& steps_;
  absl::Time first_step_ = absl::InfinitePast();
  absl::Time last_step_ = absl::InfinitePast();
};

}  // namespace

DenoiseService::DenoiseService(DenoiseCore* core, prometheus::Registry* registry,
                               const std::string& model)
    : core_(core),
      metrics_(registry != nullptr ? std::make_unique<Metrics>(*registry, model) : nullptr) {}

DenoiseService::~DenoiseService() = default;

absl::Status DenoiseService::Measured(
    const std::function<absl::Status(const std::function<void(const v1::DenoiseEvent&)>&)>& run,
    const std::function<void(v1::DenoiseEvent)>& emit) {
  absl::Status s;
  if (metrics_ == nullptr) {
    s = run([&emit](const v1::DenoiseEvent& e) { emit(e); });
  } else {
    metrics::StageCallTracker tracker(&metrics_->calls, metrics::kStageDenoise);
    StepTimer timer(metrics_->step_duration);
    s = run([&](const v1::DenoiseEvent& e) {
      timer.OnEvent(e);
      emit(e);
    });
    tracker.Finish(s);
  }
  // What a burst of queued requests left in malloc's arenas goes back to the system, and the
  // GPU memory the steps and the decode cached to the device (where asked).
  TrimHeap();
  if (release_gpu_cache_) ReleaseCachedGpuMemory();
  return s;
}

grpc::ServerWriteReactor<v1::DenoiseEvent>* DenoiseService::Denoise(
    grpc::CallbackServerContext* ctx, const v1::DenoiseRequest* request) {
  // Before any work: only the orchestrator (the stage token's holder) is served.
  if (absl::Status auth = CheckCallToken(auth_, *ctx); !auth.ok()) {
    return RejectedWrite<v1::DenoiseEvent>(ToGrpcStatus(auth));
  }
  return StreamingCall<v1::DenoiseEvent>::Start(
      ctx, [this, request](CallContext& call, const StreamingCall<v1::DenoiseEvent>::Emit& emit) {
        return Measured([&](const auto& on_event) { return core_->Denoise(call, *request, on_event); },
                        emit);
      },
      max_request_time_);
}

grpc::ServerBidiReactor<v1::DenoiseInput, v1::DenoiseEvent>* DenoiseService::DenoiseStream(
    grpc::CallbackServerContext* ctx) {
  if (absl::Status auth = CheckCallToken(auth_, *ctx); !auth.ok()) {
    return RejectedBidi<v1::DenoiseInput, v1::DenoiseEvent>(ToGrpcStatus(auth));
  }
  using Call = BidiStreamingCall<v1::DenoiseInput, v1::DenoiseEvent>;
  return Call::Start(ctx, [this](CallContext& call, InputQueue<v1::DenoiseInput>& inputs,
                                 const Call::Emit& emit) {
    return Measured(
        [&](const auto& on_event) { return core_->DenoiseStreamed(call, inputs, on_event); }, emit);
  }, max_request_time_);
}

grpc::ServerUnaryReactor* DenoiseService::Describe(grpc::CallbackServerContext* ctx,
                                                   const v1::DescribeRequest*,
                                                   v1::StageDescription* response) {
  return AnswerAtOnce(auth_, ctx, [&] { *response = core_->Describe(); });
}

}  // namespace diffmesh
