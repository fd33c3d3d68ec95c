// One request running through its model's stage graph. The orchestrator core makes one
// PipelineRun per Generate call. Stages without inputs, and stages fed their inputs as they are
// produced (stream_inputs), start at once, so independent stages run concurrently; the others
// start when their producers have finished. Each producer's output goes to its consumers as it
// arrives. gRPC-free and LibTorch-free; no model or stage name is known here, only stage kinds.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_PIPELINE_RUN_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_PIPELINE_RUN_H_

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/call/call_context.h"
#include "common/config/pipeline_config.h"
#include "diffmesh/v1/generation.pb.h"
#include "diffmesh/v1/stages.pb.h"
#include "services/orchestrator/request_trace.h"
#include "services/orchestrator/stage_client.h"

namespace diffmesh {

// A piece of a stage's output on its way to the stages that consume it. Exactly one is set.
struct StageOutput {
  const v1::ArTokenChunk* ar_chunk = nullptr;      // "ar": a chunk of the token stream
  const v1::EncodeResponse* embeddings = nullptr;  // "encoder": its whole output
  // "denoise" / "upsample" with consumers: its latents, whole.
  const v1::StageLatents* latents = nullptr;
};

class PipelineRun;

// One stage of a running request. The run calls Start once (when the stage may start), Take
// for each piece its producers publish, InputsDone once when they have all finished (or one
// failed), and Wait once, on the request's thread, in graph order.
class StageNode {
 public:
  StageNode(PipelineRun& run, const StageSpec& spec) : run_(run), spec_(spec) {}
  virtual ~StageNode() = default;
  StageNode(const StageNode&) = delete;
  StageNode& operator=(const StageNode&) = delete;

  // Starts the stage's call. Must not block on the stage's work.
  virtual absl::Status Start() = 0;
  // A piece of a producer's output, in that producer's order; must not block.
  virtual void Take(const StageOutput& piece) {}
  // Every producer has finished (OK), or the first one failed.
  virtual void InputsDone(const absl::Status& status) {}
  // Blocks until the call has ended; its status.
  virtual absl::Status Wait() = 0;

  const StageSpec& spec() const { return spec_; }

 protected:
  PipelineRun& run_;
  const StageSpec& spec_;
};

// Whether a stage of kind `consumer` can take the outputs of a stage of kind `producer`, and
// whether a kind's outputs are the request's outputs (it must then have no consumers).
bool StageKindAccepts(const std::string& consumer, const std::string& producer);
bool StageKindMakesOutputs(const std::string& kind);
// Whether a kind works on the latents of exactly one producer ("upsample", "decode").
bool StageKindTakesOneProducer(const std::string& kind);
// Whether a stage of this kind runs for the request: a "decode" does not when the request asks
// for the latents themselves (OUTPUT_FORMAT_LATENTS).
bool StageKindRunsFor(const std::string& kind, const v1::GenerateRequest& accepted);

class PipelineRun {
 public:
  // Serialised by the run: never called concurrently with itself. The event is the callee's
  // to keep (moved, not copied, on its way to the transport).
  using EmitFn = std::function<void(v1::GenerateEvent&&)>;

  // `accepted`: the validated request (ValidateRequest); the run keeps it and hands it to the
  // result's metadata at the end. Everything else must outlive the run.
  PipelineRun(CallContext& ctx, const PipelineModel& model, v1::GenerateRequest accepted,
              StageClientFactory& stages, RequestTrace& trace, EmitFn emit);

  // Runs every stage, then emits the result. Returns the first stage error (one that is not a
  // mere consequence of another's cancellation), or OK.
  absl::Status Run();

  // For the stage nodes.
  CallContext& ctx() { return ctx_; }
  const v1::GenerateRequest& accepted() const { return accepted_; }
  StageClientFactory& stages() { return stages_; }
  RequestTrace& trace() { return trace_; }
  void Emit(v1::GenerateEvent&& e);
  void EmitStage(const StageSpec& stage, v1::StageEvent::Kind kind, double seconds = 0);
  void EmitProgress(const StageSpec& stage, const char* unit, int64_t done, int64_t total);
  // An output chunk of a stage whose outputs are the request's (renumbered request-wide).
  void EmitOutput(const StageNode& node, const v1::OutputChunk& chunk);
  void AddTiming(const std::string& stage, double seconds);
  // A stage that timed itself finished: its timing, its metric and its FINISHED event.
  void StageTookSeconds(const StageSpec& stage, double seconds);
  void CountPriorTokens(int tokens);
  // Whether some stage consumes `node`'s outputs (then they are not the request's). Valid from
  // Start on.
  bool HasConsumers(const StageNode& node) const { return consumers_.count(&node) > 0; }
  // From a node: a piece of its output, for its consumers.
  void Publish(const StageNode& node, const StageOutput& piece);
  // From a node, once: its call ended with `status`.
  void Finished(const StageNode& node, const absl::Status& status);

 private:
  absl::Status BuildNodes();
  bool StartsAtOnce(const StageSpec& spec) const;
  void Fail(const absl::Status& status);
  absl::Status Outcome();
  void EmitResult(absl::Time start);

  CallContext& ctx_;
  const PipelineModel& model_;
  v1::GenerateRequest accepted_;  // read-only until EmitResult
  StageClientFactory& stages_;
  RequestTrace& trace_;
  const EmitFn emit_;
  std::vector<std::unique_ptr<StageNode>> nodes_;
  std::map<const StageNode*, std::vector<StageNode*>> consumers_;
  std::map<const StageNode*, int> producers_left_;  // under mu_
  std::set<const StageNode*> inputs_closed_;         // under mu_

  std::mutex mu_;  // guards what follows
  absl::Status first_error_;
  v1::ResultMetadata meta_;
  std::vector<v1::Output> outputs_;  // info only
  std::map<std::pair<const StageNode*, int>, int> output_index_;
  std::mutex emit_mu_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_PIPELINE_RUN_H_
