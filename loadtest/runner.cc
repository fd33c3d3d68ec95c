#include "loadtest/runner.h"

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "diffmesh/client.h"
#include "google/protobuf/util/json_util.h"

namespace diffmesh::loadtest {
namespace {

// What one phase (warm-up or measured) leaves behind.
struct PhaseResult {
  std::vector<RequestRecord> records;
  int64_t issued = 0;
  int max_in_flight = 0;
  absl::Time start;
  absl::Time last_arrival;  // intended start of the last request issued
  absl::Time last_done;
};

// Completion state shared with the SDK's callbacks (gRPC threads).
struct InFlight {
  std::mutex mu;
  std::condition_variable cv;
  int count = 0;
  int max_count = 0;
  std::vector<RequestRecord> records;
  absl::Time last_done = absl::InfinitePast();
};

RequestRecord ToRecord(const absl::StatusOr<v1::GenerateResult>& result, absl::Time intended,
                       absl::Time done) {
  RequestRecord r;
  r.latency_seconds = absl::ToDoubleSeconds(done - intended);
  if (!result.ok()) {
    r.code = result.status().code();
    r.message = std::string(result.status().message());
    return r;
  }
  const v1::ResultMetadata& m = result->metadata();
  r.server_total_seconds = m.total_seconds();
  for (const v1::StageTiming& t : m.stage_timings()) r.stage_seconds.emplace_back(t.stage(), t.seconds());
  return r;
}

// Issues up to `limit` requests (0: no limit) until `duration` (zero: no limit) has passed,
// closed- or open-loop as the options say, then waits for all of them.
PhaseResult RunPhase(sdk::Client& client, const LoadOptions& o, int64_t limit,
                     absl::Duration duration, std::mt19937_64& rng) {
  auto state = std::make_shared<InFlight>();
  PhaseResult phase;
  phase.start = absl::Now();
  const absl::Time stop =
      duration > absl::ZeroDuration() ? phase.start + duration : absl::InfiniteFuture();
  auto issue = [&](absl::Time intended) {
    phase.last_arrival = intended;
    {
      std::lock_guard<std::mutex> lock(state->mu);
      ++state->count;
      state->max_count = std::max(state->max_count, state->count);
    }
    ++phase.issued;
    client.GenerateAsync(
        o.request, nullptr,
        [state, intended](absl::StatusOr<v1::GenerateResult> result) {
          const absl::Time done = absl::Now();
          RequestRecord record = ToRecord(result, intended, done);
          std::lock_guard<std::mutex> lock(state->mu);
          state->records.push_back(std::move(record));
          state->last_done = std::max(state->last_done, done);
          --state->count;
          state->cv.notify_all();
        },
        nullptr, o.request_timeout);
  };
  auto more = [&] { return limit == 0 || phase.issued < limit; };

  if (o.rate > 0) {
    // Open loop: arrival k is at start + the sum of k exponential gaps; it is issued then (or
    // as soon as this thread gets there) and its latency counts from the arrival time.
    std::exponential_distribution<double> gap(o.rate);
    absl::Time next = phase.start;
    while (more() && next < stop) {
      const absl::Time now = absl::Now();
      if (next > now) absl::SleepFor(next - now);
      issue(next);
      next += absl::Seconds(gap(rng));
    }
  } else {
    // Closed loop: keep `concurrency` requests in flight.
    while (more()) {
      std::unique_lock<std::mutex> lock(state->mu);
      while (state->count >= o.concurrency && absl::Now() < stop) {
        const absl::Time wake = std::min(stop, absl::Now() + absl::Milliseconds(100));
        state->cv.wait_until(lock, absl::ToChronoTime(wake));
      }
      lock.unlock();
      if (absl::Now() >= stop) break;
      issue(absl::Now());
    }
  }
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->count == 0; });
  phase.records = std::move(state->records);
  phase.max_in_flight = state->max_count;
  phase.last_done = state->last_done;
  return phase;
}

nlohmann::ordered_json SummaryToJson(const Summary& s) {
  nlohmann::ordered_json j;
  j["count"] = s.count;
  j["mean"] = s.mean;
  j["min"] = s.min;
  j["p50"] = s.p50;
  j["p90"] = s.p90;
  j["p99"] = s.p99;
  j["max"] = s.max;
  return j;
}

std::string TableRow(const std::string& name, const Summary& s) {
  return absl::StrFormat("  %-18s %6d %9.2f %9.2f %9.2f %9.2f %9.2f\n", name, s.count,
                         s.mean * 1e3, s.p50 * 1e3, s.p90 * 1e3, s.p99 * 1e3, s.max * 1e3);
}

}  // namespace

double OrchestratorSeconds(double total_seconds,
                           const std::vector<std::pair<std::string, double>>& stage_seconds) {
  double beside_ar = 0, sequential = 0;
  for (const auto& [stage, seconds] : stage_seconds) {
    if (stage == "ar" || stage == "encoder") {
      beside_ar = std::max(beside_ar, seconds);
    } else {
      sequential += seconds;
    }
  }
  return total_seconds - beside_ar - sequential;
}

absl::Status ValidateOptions(const LoadOptions& o) {
  if (o.target.empty()) return absl::InvalidArgumentError("--target: must not be empty");
  if (o.rate < 0) return absl::InvalidArgumentError("--rate: must be >= 0");
  if (o.rate == 0 && o.concurrency < 1) return absl::InvalidArgumentError("--concurrency: must be >= 1");
  if (o.count < 0) return absl::InvalidArgumentError("--count: must be >= 0");
  if (o.warmup < 0) return absl::InvalidArgumentError("--warmup: must be >= 0");
  if (o.duration < absl::ZeroDuration()) return absl::InvalidArgumentError("--duration: must be >= 0");
  if (o.count == 0 && o.duration == absl::ZeroDuration()) {
    return absl::InvalidArgumentError("give --count and/or --duration to bound the run");
  }
  if (o.request_timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("--timeout: must be > 0");
  if (o.request.prompt().empty()) return absl::InvalidArgumentError("--prompt: must not be empty");
  return absl::OkStatus();
}

absl::StatusOr<Report> RunLoad(const LoadOptions& o) {
  if (absl::Status s = ValidateOptions(o); !s.ok()) return s;
  sdk::ClientOptions client_options;
  client_options.address = o.target;
  client_options.default_deadline = o.request_timeout;
  client_options.tls = o.tls;
  client_options.bearer_token = o.bearer_token;
  auto client = sdk::Client::Create(client_options);
  if (!client.ok()) return client.status();
  std::mt19937_64 rng(o.arrival_seed);

  int64_t warmup_completed = 0;
  if (o.warmup > 0) {
    warmup_completed = RunPhase(**client, o, o.warmup, absl::ZeroDuration(), rng).issued;
  }
  PhaseResult phase = RunPhase(**client, o, o.count, o.duration, rng);

  Report report = BuildReport(o, phase.records);
  report.warmup_completed = warmup_completed;
  report.issued = phase.issued;
  report.max_in_flight = phase.max_in_flight;
  if (phase.issued > 0) {
    report.wall_seconds = absl::ToDoubleSeconds(phase.last_done - phase.start);
    report.issue_seconds = absl::ToDoubleSeconds(phase.last_arrival - phase.start);
  }
  if (report.wall_seconds > 0) report.throughput_rps = report.ok / report.wall_seconds;
  // n arrivals span n − 1 gaps of the schedule.
  if (o.rate > 0 && report.issued > 1 && report.issue_seconds > 0) {
    report.offered_rps = (report.issued - 1) / report.issue_seconds;
  }
  return report;
}

Report BuildReport(const LoadOptions& o, const std::vector<RequestRecord>& records) {
  Report report;
  report.options = o;
  report.issued = static_cast<int64_t>(records.size());
  std::vector<double> latency, total, orchestrator, client_overhead;
  std::map<std::string, std::vector<double>> stages;
  for (const RequestRecord& r : records) {
    if (r.code != absl::StatusCode::kOk) {
      ++report.failed;
      const std::string code = absl::StatusCodeToString(r.code);
      if (report.errors_by_code[code]++ == 0) report.first_error[code] = r.message;
      continue;
    }
    ++report.ok;
    latency.push_back(r.latency_seconds);
    total.push_back(r.server_total_seconds);
    orchestrator.push_back(OrchestratorSeconds(r.server_total_seconds, r.stage_seconds));
    client_overhead.push_back(r.latency_seconds - r.server_total_seconds);
    for (const auto& [stage, seconds] : r.stage_seconds) stages[stage].push_back(seconds);
  }
  report.latency = Summarize(std::move(latency));
  report.server_total = Summarize(std::move(total));
  report.orchestrator = Summarize(std::move(orchestrator));
  report.client_overhead = Summarize(std::move(client_overhead));
  for (auto& [stage, values] : stages) report.stages[stage] = Summarize(std::move(values));
  return report;
}

nlohmann::ordered_json ReportToJson(const Report& r) {
  const LoadOptions& o = r.options;
  nlohmann::ordered_json j;
  j["target"] = o.target;
  j["mode"] = o.rate > 0 ? "open" : "closed";
  if (o.rate > 0) {
    j["rate"] = o.rate;
  } else {
    j["concurrency"] = o.concurrency;
  }
  // The request as sent, in the API's JSON mapping (proto field names, unset fields left out).
  std::string request_json;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(o.request, &request_json, print);
  nlohmann::ordered_json req = nlohmann::ordered_json::parse(request_json, nullptr, false);
  if (!o.request.has_seed()) req["seed"] = nullptr;  // drawn by the server per request
  j["request"] = req;
  j["warmup"] = r.warmup_completed;
  j["count"] = r.issued;
  j["ok"] = r.ok;
  j["errors"] = r.failed;
  j["errors_by_code"] = r.errors_by_code;
  j["first_error"] = r.first_error;
  j["wall_seconds"] = r.wall_seconds;
  j["throughput_rps"] = r.throughput_rps;
  if (o.rate > 0) j["offered_rps"] = r.offered_rps;
  j["max_in_flight"] = r.max_in_flight;
  nlohmann::ordered_json lat;
  lat["end_to_end"] = SummaryToJson(r.latency);
  lat["server_total"] = SummaryToJson(r.server_total);
  nlohmann::ordered_json stages = nlohmann::ordered_json::object();
  for (const auto& [stage, s] : r.stages) stages[stage] = SummaryToJson(s);
  lat["stages"] = stages;
  lat["orchestrator"] = SummaryToJson(r.orchestrator);
  lat["client_overhead"] = SummaryToJson(r.client_overhead);
  j["latency_seconds"] = lat;
  return j;
}

std::string ReportToTable(const Report& r) {
  const LoadOptions& o = r.options;
  std::string out;
  const std::string loop = o.rate > 0 ? absl::StrFormat("open loop, Poisson arrivals at %.2f req/s", o.rate)
                                      : absl::StrCat("closed loop, concurrency ", o.concurrency);
  absl::StrAppendFormat(&out, "diffmesh-loadtest  %s  %s\n", o.target, loop);
  absl::StrAppendFormat(&out, "request            model %s, %s, %s steps, seed %s\n",
                        o.request.model().empty() ? "(default)" : o.request.model(),
                        o.request.height() == 0 && o.request.width() == 0
                            ? std::string("default size")
                            : absl::StrCat(o.request.width(), "x", o.request.height()),
                        o.request.steps() == 0 ? std::string("default") : absl::StrCat(o.request.steps()),
                        o.request.has_seed() ? absl::StrCat(o.request.seed()) : std::string("drawn"));
  absl::StrAppendFormat(&out, "requests           %d measured (after %d warm-up): %d ok, %d failed\n",
                        r.issued, r.warmup_completed, r.ok, r.failed);
  absl::StrAppendFormat(&out, "wall time          %.2f s\n", r.wall_seconds);
  absl::StrAppendFormat(&out, "throughput         %.2f req/s", r.throughput_rps);
  if (o.rate > 0) absl::StrAppendFormat(&out, " (offered %.2f req/s)", r.offered_rps);
  absl::StrAppendFormat(&out, "\nmax in flight      %d\n\n", r.max_in_flight);
  absl::StrAppendFormat(&out, "  %-18s %6s %9s %9s %9s %9s %9s\n", "latency (ms)", "n", "mean", "p50",
                        "p90", "p99", "max");
  out += TableRow("end-to-end", r.latency);
  out += TableRow("server total", r.server_total);
  for (const auto& [stage, s] : r.stages) out += TableRow("  " + stage, s);
  out += TableRow("  orchestrator", r.orchestrator);
  out += TableRow("client overhead", r.client_overhead);
  out += "\nerrors by code    ";
  if (r.errors_by_code.empty()) out += " none";
  for (const auto& [code, n] : r.errors_by_code) {
    absl::StrAppendFormat(&out, "\n  %-18s %d  (first: %s)", code, n, r.first_error.at(code));
  }
  out += "\n";
  return out;
}

}  // namespace diffmesh::loadtest
