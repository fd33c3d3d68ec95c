// Every diffmesh metric family: names, help, label names and buckets in one place. The
// Grafana dashboard (deploy/grafana/diffmesh.json) and tests/observability_test.py query these
// names. Conventions (https://prometheus.io/docs/practices/naming/): prefix diffmesh_, base
// units (seconds, bytes), counters end in _total, one histogram per quantity with a `stage`
// label rather than one metric per stage, and label values from small fixed sets (model names
// from the pipeline config, canonical status code names, the stage names below).
#ifndef DIFFMESH_COMMON_METRICS_FAMILIES_H_
#define DIFFMESH_COMMON_METRICS_FAMILIES_H_

#include <string>

#include "absl/status/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace diffmesh::metrics {

// Values of the `stage` label.
inline constexpr char kStageAr[] = "ar";
inline constexpr char kStageEncoder[] = "encoder";
inline constexpr char kStageDenoise[] = "denoise";
inline constexpr char kStageVaeDecode[] = "vae_decode";
// A decode stage of the pipeline (the VAE decode as a stage of its own) reports under its
// pipeline name, e.g. "decode": dashboards read decode time as stage=~"vae_decode|decode".
// Orchestrator-observed stage time minus the stage's own reported compute time: the wire,
// (de)serialisation and waiting inside the stage service.
inline constexpr char kStageTransfer[] = "transfer";
// diffmesh_requests_waiting only: arrived at the orchestrator, no stage started yet.
inline constexpr char kStageOrchestrator[] = "orchestrator";

// Values of the `direction` label of diffmesh_stage_bytes_total, seen from the orchestrator.
inline constexpr char kDirectionSent[] = "sent";
inline constexpr char kDirectionReceived[] = "received";

// Names of the gauges read at scrape time (CallbackGauge).
inline constexpr char kArKvCacheSlots[] = "diffmesh_ar_kv_cache_slots";
inline constexpr char kArKvCacheSlotsHelp[] =
    "KV-cache slots of the AR service by state (used: holding a running sequence; free).";
inline constexpr char kRequestsWaiting[] = "diffmesh_requests_waiting";
inline constexpr char kRequestsWaitingHelp[] =
    "Requests waiting to start, by where they wait (orchestrator: arrived, no stage started "
    "yet; ar: queued for an AR KV-cache slot).";
inline constexpr char kGpuMemoryBytes[] = "diffmesh_gpu_memory_bytes";
inline constexpr char kGpuMemoryBytesHelp[] =
    "GPU memory held by this process's LibTorch caching allocator, by device and state "
    "(allocated: in tensors; reserved: allocated plus cached).";

// The `code` label: the canonical status code name ("OK", "INVALID_ARGUMENT", ...).
std::string CodeLabel(absl::StatusCode code);

// Request-level metrics, recorded by the orchestrator: it sees every request and stage.
struct RequestFamilies {
  explicit RequestFamilies(prometheus::Registry& registry);

  // diffmesh_requests_total{model, code}
  prometheus::Family<prometheus::Counter>& requests;
  // diffmesh_request_duration_seconds{model}: arrival to result, successful requests.
  prometheus::Family<prometheus::Histogram>& request_duration;
  // diffmesh_queue_duration_seconds{model}: a started request's time spent waiting to run:
  // arrival to the first stage's start, plus what stages reported waiting for their turn (the
  // denoise group's one request at a time). Observed once per request, when it ends.
  prometheus::Family<prometheus::Histogram>& queue_duration;
  // diffmesh_time_to_first_event_seconds{model}: arrival to the first progress event (AR
  // tokens or a denoise step) streamed to the client.
  prometheus::Family<prometheus::Histogram>& time_to_first_event;
  // diffmesh_requests_in_flight{model}: accepted, not finished.
  prometheus::Family<prometheus::Gauge>& in_flight;
  // diffmesh_requests_waiting{stage="orchestrator"}
  prometheus::Family<prometheus::Gauge>& waiting;
  // diffmesh_stage_duration_seconds{model, stage}
  prometheus::Family<prometheus::Histogram>& stage_duration;
  // diffmesh_stage_bytes_total{stage, direction}: serialized stage messages.
  prometheus::Family<prometheus::Counter>& stage_bytes;
  // Video models' successful requests (image outputs are not counted):
  // diffmesh_video_frames_total{model}: video frames generated.
  prometheus::Family<prometheus::Counter>& video_frames;
  // diffmesh_video_seconds_total{model}: playing time of the video generated (frames / rate).
  prometheus::Family<prometheus::Counter>& video_seconds;
  // diffmesh_audio_seconds_total{model}: sound generated (an MP4's track, RAW audio samples).
  prometheus::Family<prometheus::Counter>& audio_seconds;
  // diffmesh_video_frame_seconds{model}: one request's arrival-to-result time over its video
  // frames: how fast the mesh makes video (frames per second = 1 / this; a histogram in the
  // base unit, as every diffmesh histogram).
  prometheus::Family<prometheus::Histogram>& video_frame_seconds;
};

// Per-call metrics every stage service records (server side).
struct StageServiceFamilies {
  explicit StageServiceFamilies(prometheus::Registry& registry);

  // diffmesh_stage_requests_total{stage, code}
  prometheus::Family<prometheus::Counter>& requests;
  // diffmesh_stage_requests_in_flight{stage}
  prometheus::Family<prometheus::Gauge>& in_flight;
};

// The AR service's token stream.
struct ArFamilies {
  explicit ArFamilies(prometheus::Registry& registry);

  // diffmesh_ar_time_to_first_token_seconds{model}: call arrival to the first streamed token.
  prometheus::Family<prometheus::Histogram>& time_to_first_token;
  // diffmesh_ar_time_per_token_seconds{model}: one request's mean decode time per token
  // after its first streamed chunk.
  prometheus::Family<prometheus::Histogram>& time_per_token;
  // diffmesh_ar_tokens_total{model}: tokens streamed.
  prometheus::Family<prometheus::Counter>& tokens;
};

// The denoise service (rank 0 of the group).
struct DenoiseFamilies {
  explicit DenoiseFamilies(prometheus::Registry& registry);

  // diffmesh_denoise_step_duration_seconds{model}
  prometheus::Family<prometheus::Histogram>& step_duration;
};

// Every rank of a denoise group, rank 0 included (the rank label is bounded by the group size).
struct DenoiseRankFamilies {
  explicit DenoiseRankFamilies(prometheus::Registry& registry);

  // diffmesh_denoise_rank_step_duration_seconds{model, rank}
  prometheus::Family<prometheus::Histogram>& step_duration;
};

// Counts one stage-service call: in flight while it lives, then by its final code.
class StageCallTracker {
 public:
  // `families` may be null (metrics off): then it does nothing.
  StageCallTracker(StageServiceFamilies* families, const std::string& stage);
  StageCallTracker(const StageCallTracker&) = delete;
  StageCallTracker& operator=(const StageCallTracker&) = delete;
  ~StageCallTracker();
  void Finish(const absl::Status& status);

 private:
  StageServiceFamilies* families_;
  std::string stage_;
  bool finished_ = false;
};

}  // namespace diffmesh::metrics

#endif  // DIFFMESH_COMMON_METRICS_FAMILIES_H_
