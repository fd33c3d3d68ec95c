#include "services/orchestrator/orchestrator_core.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "services/orchestrator/pipeline_run.h"
#include "services/orchestrator/request_trace.h"

namespace diffmesh {
namespace {

// The model label of a request: bounded to the pipeline's models.
std::string ModelLabel(const PipelineConfig& p, const v1::GenerateRequest& r) {
  const std::string& name = r.model().empty() ? p.default_model : r.model();
  return p.FindModel(name) != nullptr ? name : "unknown";
}

absl::Status CheckStageGraph(const PipelineModel& m) {
  std::set<std::string> consumed;
  for (const StageSpec& s : m.stages) {
    if (StageKindTakesOneProducer(s.kind) && s.inputs.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("model '", m.name, "': stage '", s.name, "' (", s.kind,
                       ") takes the latents of exactly one stage, not ", s.inputs.size()));
    }
    for (const std::string& in : s.inputs) {
      const StageSpec* producer = m.FindStage(in);
      if (!StageKindAccepts(s.kind, producer->kind)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model '", m.name, "': stage '", s.name, "' (", s.kind, ") cannot take the output of '",
            in, "' (", producer->kind, ")"));
      }
      consumed.insert(in);
    }
  }
  int outputs = 0;
  for (const StageSpec& s : m.stages) {
    if (consumed.count(s.name)) continue;
    if (!StageKindMakesOutputs(s.kind)) {
      return absl::InvalidArgumentError(absl::StrCat("model '", m.name, "': the output of stage '",
                                                     s.name, "' (", s.kind, ") goes nowhere"));
    }
    ++outputs;
  }
  if (outputs == 0) {
    return absl::InvalidArgumentError(absl::StrCat("model '", m.name, "': no stage makes outputs"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckStageGraphs(const PipelineConfig& pipeline) {
  for (const PipelineModel& m : pipeline.models) {
    if (absl::Status s = CheckStageGraph(m); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<OrchestratorCore>> OrchestratorCore::Create(Options options) {
  if (options.stages == nullptr) return absl::InvalidArgumentError("stages must be set");
  if (absl::Status s = CheckStageGraphs(options.pipeline); !s.ok()) return s;
  return std::unique_ptr<OrchestratorCore>(new OrchestratorCore(std::move(options)));
}

absl::Status OrchestratorCore::Admit(const std::string& model) {
  const int limit = options_.max_queued_requests;
  std::lock_guard<std::mutex> lock(admission_mu_);
  int& admitted = admitted_[model];
  if (limit > 0 && admitted >= limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "model '", model, "' already has ", admitted,
        " requests running or waiting (the orchestrator's --max-queued-requests); retry after a "
        "few seconds, with backoff"));
  }
  ++admitted;
  return absl::OkStatus();
}

void OrchestratorCore::Release(const std::string& model) {
  std::lock_guard<std::mutex> lock(admission_mu_);
  --admitted_[model];
}

absl::Status OrchestratorCore::Generate(CallContext& ctx, const v1::GenerateRequest& request,
                                        const Emit& emit) {
  const std::string model_label = ModelLabel(options_.pipeline, request);
  RequestTrace trace(options_.observer, model_label);
  absl::Status status = [&]() -> absl::Status {
    absl::StatusOr<v1::GenerateRequest> accepted = ValidateRequest(options_.pipeline, request);
    if (!accepted.ok()) return accepted.status();
    const PipelineModel& model = *options_.pipeline.FindModel(accepted->model());
    // After validation (cheap, and a request for an unknown model holds no slot), before any
    // stage is called.
    if (absl::Status admitted = Admit(model.name); !admitted.ok()) return admitted;
    struct Slot {
      OrchestratorCore* core;
      const std::string& model;
      ~Slot() { core->Release(model); }
    } slot{this, model.name};
    trace.Accepted();
    PipelineRun run(ctx, model, *std::move(accepted), *options_.stages, trace, emit);
    return run.Run();
  }();
  trace.Finish(status);
  return status;
}

}  // namespace diffmesh
