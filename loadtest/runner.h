// The load generator behind diffmesh-loadtest: drives GenerationService.Generate through the
// C++ SDK's async path (no thread per request) closed-loop or open-loop, and summarises
// end-to-end and per-stage latency. Links diffmesh::client only.
#ifndef DIFFMESH_LOADTEST_RUNNER_H_
#define DIFFMESH_LOADTEST_RUNNER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "diffmesh/client.h"
#include "diffmesh/v1/generation.pb.h"
#include "loadtest/stats.h"
#include "nlohmann/json.hpp"

namespace diffmesh::loadtest {

struct LoadOptions {
  // Orchestrator, "host:port".
  std::string target = "127.0.0.1:50051";
  // TLS to it (unset: plaintext) and the API token every request carries (empty: none); the
  // report shows neither.
  std::optional<sdk::TlsOptions> tls;
  std::string bearer_token;
  // Closed loop (rate == 0): this many requests in flight; each completion issues the next.
  int concurrency = 1;
  // Open loop when > 0: Poisson arrivals at this many requests per second, issued on schedule
  // whatever the number in flight (arrivals never wait for completions).
  double rate = 0;
  // The measured phase ends after `count` requests (0: no limit) and/or after `duration`
  // (zero: no limit) of issuing; at least one must be set. Requests in flight then finish.
  int64_t count = 0;
  absl::Duration duration = absl::ZeroDuration();
  // Requests run first, in the same loop, and waited for; excluded from every figure.
  int64_t warmup = 0;
  // Deadline of each request.
  absl::Duration request_timeout = absl::Minutes(10);
  // Seed of the open loop's arrival times (reproducible schedules).
  uint64_t arrival_seed = 1;
  // Sent as is, every time.
  v1::GenerateRequest request;
};

// One finished request of the measured phase.
struct RequestRecord {
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string message;
  // From the request's intended start (open loop: its arrival time, so queueing in the client
  // counts) to the end of its stream.
  double latency_seconds = 0;
  // From the result's metadata (OK requests only).
  double server_total_seconds = 0;
  std::vector<std::pair<std::string, double>> stage_seconds;
};

struct Report {
  LoadOptions options;
  int64_t warmup_completed = 0;
  int64_t issued = 0;  // measured phase
  int64_t ok = 0;
  int64_t failed = 0;
  std::map<std::string, int64_t> errors_by_code;  // "UNAVAILABLE" → count
  std::map<std::string, std::string> first_error;  // code → the first message seen
  double wall_seconds = 0;    // measured phase: first issue → last completion
  double issue_seconds = 0;   // measured phase: first → last request's intended start
  double throughput_rps = 0;  // ok / wall_seconds
  double offered_rps = 0;     // open loop: the arrival rate achieved, (issued − 1) / issue_seconds
  int max_in_flight = 0;
  // OK requests only.
  Summary latency;                        // end to end, client side
  Summary server_total;                   // metadata.total_seconds
  std::map<std::string, Summary> stages;  // metadata.stage_timings by stage
  Summary orchestrator;                   // OrchestratorSeconds
  Summary client_overhead;                // latency − server total
};

// The orchestrator's own share of a request: its total minus the stages' critical path. The
// encoder runs beside the AR stage, so the path is max(ar, encoder) + every other stage. What
// remains is validation, scheduling and event fan-out plus the denoise stage's transport (the
// "ar" and "encoder" timings are taken by the orchestrator around those calls, so their
// transport is inside them; "denoise" and "vae_decode" are the denoise service's own times).
double OrchestratorSeconds(double total_seconds,
                           const std::vector<std::pair<std::string, double>>& stage_seconds);

absl::Status ValidateOptions(const LoadOptions& options);

// Runs the warm-up, then the measured phase, against options.target.
absl::StatusOr<Report> RunLoad(const LoadOptions& options);

// Summarises the measured phase's records (exposed for tests).
Report BuildReport(const LoadOptions& options, const std::vector<RequestRecord>& records);

nlohmann::ordered_json ReportToJson(const Report& report);
std::string ReportToTable(const Report& report);

}  // namespace diffmesh::loadtest

#endif  // DIFFMESH_LOADTEST_RUNNER_H_
