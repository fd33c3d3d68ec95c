// Reports one request to the RequestObserver; does nothing without one. Accepted and Finish
// run on the request's thread, OnEvent under the run's emit lock; StageFinished and Bytes only
// read constant state, so stage callbacks on the transports' threads may call them.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_TRACE_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_TRACE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "diffmesh/v1/generation.pb.h"
#include "services/orchestrator/request_observer.h"

namespace diffmesh {

class RequestTrace {
 public:
  RequestTrace(RequestObserver* observer, std::string model)
      : observer_(observer), arrival_(absl::Now()) {
    outcome_.model = std::move(model);
    if (observer_ != nullptr) observer_->RequestArrived();
  }
  RequestTrace(const RequestTrace&) = delete;
  RequestTrace& operator=(const RequestTrace&) = delete;

  bool on() const { return observer_ != nullptr; }

  void Accepted() {
    outcome_.accepted = true;
    if (observer_ != nullptr) observer_->RequestAccepted(outcome_.model);
  }

  // Called with every event the request emits, in order.
  void OnEvent(const v1::GenerateEvent& e) {
    if (observer_ == nullptr) return;
    if (!outcome_.started && e.has_stage() && e.stage().kind() == v1::StageEvent::KIND_STARTED) {
      outcome_.started = true;
      observer_->FirstStageStarted(outcome_.model, SinceArrival());
    }
    if (!saw_progress_ && e.has_progress()) {
      saw_progress_ = true;
      observer_->FirstProgress(outcome_.model, SinceArrival());
    }
  }

  void StageFinished(const std::string& stage, double seconds) {
    if (observer_ != nullptr) observer_->StageFinished(outcome_.model, stage, seconds);
  }

  // Serialized size of a message to or from a stage.
  void Bytes(const std::string& stage, bool sent, const google::protobuf::MessageLite& m) {
    if (observer_ != nullptr) {
      observer_->StageBytes(stage, sent, static_cast<int64_t>(m.ByteSizeLong()));
    }
  }

  void Finish(const absl::Status& status) {
    if (observer_ == nullptr) return;
    outcome_.code = status.code();
    outcome_.seconds = SinceArrival();
    observer_->RequestFinished(outcome_);
  }

 private:
  double SinceArrival() const { return absl::ToDoubleSeconds(absl::Now() - arrival_); }

  RequestObserver* const observer_;
  const absl::Time arrival_;
  RequestObserver::Outcome outcome_;
  bool saw_progress_ = false;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_TRACE_H_
