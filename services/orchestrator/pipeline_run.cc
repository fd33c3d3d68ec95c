#include "services/orchestrator/pipeline_run.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/orchestrator/request_validator.h"
#include "services/orchestrator/stage_nodes.h"

namespace diffmesh {

PipelineRun::PipelineRun(CallContext& ctx, const PipelineModel& model, v1::GenerateRequest accepted,
                         StageClientFactory& stages, RequestTrace& trace, EmitFn emit)
    : ctx_(ctx),
      model_(model),
      accepted_(std::move(accepted)),
      stages_(stages),
      trace_(trace),
      emit_(std::move(emit)) {}

absl::Status PipelineRun::BuildNodes() {
  std::map<std::string, StageNode*> by_name;
  for (const StageSpec& spec : model_.stages) {
    // Left out (e.g. a decode when the latents are asked for): its producer's outputs are then
    // the request's. Such a kind has no consumers.
    if (!StageKindRunsFor(spec.kind, accepted_)) continue;
    auto node = MakeStageNode(*this, spec);
    if (!node.ok()) return node.status();
    by_name[spec.name] = node->get();
    producers_left_[node->get()] = static_cast<int>(spec.inputs.size());
    for (const std::string& in : spec.inputs) consumers_[by_name.at(in)].push_back(node->get());
    nodes_.push_back(std::move(*node));
  }
  return absl::OkStatus();
}

bool PipelineRun::StartsAtOnce(const StageSpec& spec) const {
  return spec.inputs.empty() || spec.stream_inputs;
}

absl::Status PipelineRun::Run() {
  const absl::Time start = absl::Now();
  {
    v1::GenerateEvent e;
    e.mutable_accepted()->set_request_id(accepted_.request_id());
    *e.mutable_accepted()->mutable_request() = WithoutMediaBytes(accepted_);
    Emit(std::move(e));
  }
  if (absl::Status s = BuildNodes(); !s.ok()) return s;
  // Stages that may start now, start now: consumers before their producers, so that a
  // streamed consumer's call is open before the first piece arrives. The rest start when their
  // producers are done, which, in graph order, is when the loop below reaches them.
  std::vector<bool> started(nodes_.size(), false);
  for (size_t i = nodes_.size(); i-- > 0 && Outcome().ok();) {
    if (!StartsAtOnce(nodes_[i]->spec())) continue;
    started[i] = true;
    if (absl::Status s = nodes_[i]->Start(); !s.ok()) {
      Finished(*nodes_[i], s);
      started[i] = false;
    }
  }
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (!started[i]) {
      if (!Outcome().ok()) continue;  // a producer failed: the stage never starts
      if (absl::Status s = ctx_.Check("orchestrator"); !s.ok()) {
        Fail(s);
        continue;
      }
      if (absl::Status s = nodes_[i]->Start(); !s.ok()) {
        Finished(*nodes_[i], s);
        continue;
      }
    }
    if (absl::Status s = nodes_[i]->Wait(); !s.ok()) Fail(s);
  }
  if (absl::Status s = Outcome(); !s.ok()) return s;
  EmitResult(start);
  return absl::OkStatus();
}

void PipelineRun::Emit(v1::GenerateEvent&& e) {
  std::lock_guard<std::mutex> lock(emit_mu_);
  trace_.OnEvent(e);
  emit_(std::move(e));
}

void PipelineRun::EmitStage(const StageSpec& stage, v1::StageEvent::Kind kind, double seconds) {
  v1::GenerateEvent e;
  e.mutable_stage()->set_stage(stage.name);
  e.mutable_stage()->set_kind(kind);
  if (kind == v1::StageEvent::KIND_FINISHED) e.mutable_stage()->set_duration_seconds(seconds);
  Emit(std::move(e));
}

void PipelineRun::EmitProgress(const StageSpec& stage, const char* unit, int64_t done,
                               int64_t total) {
  v1::GenerateEvent e;
  v1::Progress* p = e.mutable_progress();
  p->set_stage(stage.name);
  p->set_unit(unit);
  p->set_done(done);
  p->set_total(total);
  Emit(std::move(e));
}

void PipelineRun::EmitOutput(const StageNode& node, const v1::OutputChunk& chunk) {
  v1::GenerateEvent e;
  *e.mutable_output() = chunk;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto key = std::make_pair(&node, chunk.index());
    auto it = output_index_.find(key);
    if (it == output_index_.end()) {
      it = output_index_.emplace(key, static_cast<int>(outputs_.size())).first;
      v1::Output out;
      *out.mutable_info() = chunk.info();
      out.mutable_info()->set_index(it->second);
      outputs_.push_back(std::move(out));
    }
    e.mutable_output()->set_index(it->second);
    if (e.output().has_info()) e.mutable_output()->mutable_info()->set_index(it->second);
  }
  Emit(std::move(e));
}

void PipelineRun::AddTiming(const std::string& stage, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  for (v1::StageTiming& t : *meta_.mutable_stage_timings()) {
    if (t.stage() == stage) {  // e.g. "transfer" of several stage calls: their sum
      t.set_seconds(t.seconds() + seconds);
      return;
    }
  }
  v1::StageTiming* t = meta_.add_stage_timings();
  t->set_stage(stage);
  t->set_seconds(seconds);
}

void PipelineRun::StageTookSeconds(const StageSpec& stage, double seconds) {
  AddTiming(stage.name, seconds);
  trace_.StageFinished(stage.name, seconds);
  EmitStage(stage, v1::StageEvent::KIND_FINISHED, seconds);
}

void PipelineRun::CountPriorTokens(int tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  meta_.set_prior_tokens(tokens);
}

void PipelineRun::Publish(const StageNode& node, const StageOutput& piece) {
  auto it = consumers_.find(&node);
  if (it == consumers_.end()) return;
  for (StageNode* consumer : it->second) consumer->Take(piece);
}

void PipelineRun::Finished(const StageNode& node, const absl::Status& status) {
  if (!status.ok()) Fail(status);
  auto it = consumers_.find(&node);
  if (it == consumers_.end()) return;
  for (StageNode* consumer : it->second) {
    // A failure closes the consumer's inputs at once; success once every producer is done.
    // Either happens once.
    bool close;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const bool all_done = --producers_left_[consumer] == 0;
      close = (!status.ok() || all_done) && inputs_closed_.insert(consumer).second;
    }
    if (close) consumer->InputsDone(status);
  }
}

void PipelineRun::Fail(const absl::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A stage's own error explains the CANCELLED of the stages its failure stopped.
    if (first_error_.ok() || (absl::IsCancelled(first_error_) && !absl::IsCancelled(status))) {
      first_error_ = status;
    }
  }
  ctx_.Cancel();
}

absl::Status PipelineRun::Outcome() {
  std::lock_guard<std::mutex> lock(mu_);
  return first_error_;
}

void PipelineRun::EmitResult(absl::Time start) {
  v1::GenerateEvent e;
  v1::GenerateResult* result = e.mutable_result();
  {
    std::lock_guard<std::mutex> lock(mu_);
    meta_.set_request_id(accepted_.request_id());
    // Every stage has ended: nothing reads the request any more.
    for (v1::InputMedia& in : *accepted_.mutable_inputs()) in.clear_data();
    *meta_.mutable_request() = std::move(accepted_);
    meta_.set_total_seconds(absl::ToDoubleSeconds(absl::Now() - start));
    *result->mutable_metadata() = std::move(meta_);
    for (v1::Output& out : outputs_) {
      *result->add_outputs()->mutable_info() = std::move(*out.mutable_info());
    }
  }
  Emit(std::move(e));
}

}  // namespace diffmesh
