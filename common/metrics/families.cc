#include "common/metrics/families.h"

namespace diffmesh::metrics {

std::string CodeLabel(absl::StatusCode code) { return absl::StatusCodeToString(code); }

namespace {

template <typename T>
prometheus::Family<T>& Register(prometheus::detail::Builder<T> builder,
                                prometheus::Registry& registry, const char* name,
                                const char* help) {
  return builder.Name(name).Help(help).Register(registry);
}

}  // namespace

RequestFamilies::RequestFamilies(prometheus::Registry& r)
    : requests(Register(prometheus::BuildCounter(), r, "diffmesh_requests_total",
                        "Generate requests finished, by model and status code.")),
      request_duration(Register(prometheus::BuildHistogram(), r,
                                "diffmesh_request_duration_seconds",
                                "End-to-end time of successful Generate requests, from arrival "
                                "at the orchestrator to the result.")),
      queue_duration(Register(prometheus::BuildHistogram(), r, "diffmesh_queue_duration_seconds",
                              "Time from a request's arrival at the orchestrator to the start "
                              "of its first stage.")),
      time_to_first_event(Register(prometheus::BuildHistogram(), r,
                                   "diffmesh_time_to_first_event_seconds",
                                   "Time from a request's arrival to its first progress event "
                                   "(AR tokens or a denoise step) streamed to the client.")),
      in_flight(Register(prometheus::BuildGauge(), r, "diffmesh_requests_in_flight",
                         "Generate requests accepted and not yet finished.")),
      waiting(Register(prometheus::BuildGauge(), r, kRequestsWaiting, kRequestsWaitingHelp)),
      stage_duration(Register(prometheus::BuildHistogram(), r, "diffmesh_stage_duration_seconds",
                              "Time per stage of successful stage calls, seen by the "
                              "orchestrator (denoise and vae_decode: the stage's own compute; "
                              "transfer: the rest of the denoise call).")),
      stage_bytes(Register(prometheus::BuildCounter(), r, "diffmesh_stage_bytes_total",
                           "Serialized bytes of stage requests sent and responses received by "
                           "the orchestrator.")) {}

StageServiceFamilies::StageServiceFamilies(prometheus::Registry& r)
    : requests(Register(prometheus::BuildCounter(), r, "diffmesh_stage_requests_total",
                        "Calls a stage service finished, by stage and status code.")),
      in_flight(Register(prometheus::BuildGauge(), r, "diffmesh_stage_requests_in_flight",
                         "Calls a stage service is running.")) {}

ArFamilies::ArFamilies(prometheus::Registry& r)
    : time_to_first_token(Register(prometheus::BuildHistogram(), r,
                                   "diffmesh_ar_time_to_first_token_seconds",
                                   "Time from a call's arrival at the AR service to its first "
                                   "streamed token (queueing and prefill included; tokens "
                                   "stream in chunks).")),
      time_per_token(Register(prometheus::BuildHistogram(), r, "diffmesh_ar_time_per_token_seconds",
                              "Mean time per token of one AR call after its first chunk.")),
      tokens(Register(prometheus::BuildCounter(), r, "diffmesh_ar_tokens_total",
                      "Tokens the AR service streamed.")) {}

DenoiseFamilies::DenoiseFamilies(prometheus::Registry& r)
    : step_duration(Register(prometheus::BuildHistogram(), r,
                             "diffmesh_denoise_step_duration_seconds",
                             "Time per denoising step (the DiT passes of the guidance branches "
                             "and the scheduler step).")) {}

DenoiseRankFamilies::DenoiseRankFamilies(prometheus::Registry& r)
    : step_duration(Register(prometheus::BuildHistogram(), r,
                             "diffmesh_denoise_rank_step_duration_seconds",
                             "Time per denoising step as one rank of the group sees it: its own "
                             "DiT passes plus its waits in the group's collectives, so a slow or "
                             "starved rank stands out.")) {}

StageCallTracker::StageCallTracker(StageServiceFamilies* families, const std::string& stage)
    : families_(families), stage_(stage) {
  if (families_ != nullptr) families_->in_flight.Add({{"stage", stage_}}).Increment();
}

StageCallTracker::~StageCallTracker() {
  if (!finished_) Finish(absl::UnknownError("call ended without a status"));
}

void StageCallTracker::Finish(const absl::Status& status) {
  if (finished_) return;
  finished_ = true;
  if (families_ == nullptr) return;
  families_->in_flight.Add({{"stage", stage_}}).Decrement();
  families_->requests.Add({{"stage", stage_}, {"code", CodeLabel(status.code())}}).Increment();
}

}  // namespace diffmesh::metrics
