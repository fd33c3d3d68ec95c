// diffmesh-loadtest: load generator for a diffmesh orchestrator (GenerationService.Generate).
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/flags/flags.h"
#include "common/rpc/token_file.h"
#include "diffmesh/client.h"
#include "loadtest/runner.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Orchestrator address, HOST:PORT.");
ABSL_FLAG(std::string, tls_ca, "",
          "TLS to --target, verifying it against the CAs in this PEM file (empty with --tls-cert: "
          "the system's roots).");
ABSL_FLAG(std::string, tls_cert, "",
          "Client certificate (PEM) for a target that requires one (mutual TLS); implies TLS.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert.");
ABSL_FLAG(std::string, token_file, "",
          "Send the API token in this file (one line; # comments skipped) as 'authorization: "
          "Bearer' on every request.");
ABSL_FLAG(int, concurrency, 1, "Closed loop: requests kept in flight (ignored with --rate).");
ABSL_FLAG(double, rate, 0,
          "Open loop: Poisson arrivals at this many requests/s, independent of completions "
          "(0: closed loop).");
ABSL_FLAG(int64_t, count, 0, "Measured requests to issue (0: no limit; then --duration bounds the run).");
ABSL_FLAG(double, duration, 0, "Seconds to keep issuing measured requests (0: no limit).");
ABSL_FLAG(int64_t, warmup, 0, "Requests run and waited for before measuring; excluded from the report.");
ABSL_FLAG(bool, json, false, "Print the report as JSON (for CI) instead of a table.");
ABSL_FLAG(std::string, prompt, "a lighthouse with a sign that says \"diffmesh\"", "Prompt of every request.");
ABSL_FLAG(std::string, negative_prompt, "", "Negative prompt of every request.");
ABSL_FLAG(std::string, model, "", "Model (empty: the pipeline's default).");
ABSL_FLAG(int, height, 0, "Image height in pixels (0: the model's default).");
ABSL_FLAG(int, width, 0, "Image width in pixels (0: the model's default).");
ABSL_FLAG(int, steps, 0, "Denoising steps (0: the model's default).");
ABSL_FLAG(double, guidance_scale, -1, "Guidance scale (negative: the model's default).");
ABSL_FLAG(int64_t, seed, -1, "Seed of every request (negative: the server draws one per request).");
ABSL_FLAG(double, timeout, 600, "Deadline of each request, seconds.");
ABSL_FLAG(uint64_t, arrival_seed, 1, "Seed of the open loop's arrival schedule.");
ABSL_FLAG(double, wait_for_server, 30,
          "Seconds to wait for the target's GenerationService to report SERVING (every stage up) "
          "before starting (0: do not wait).");

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
      "diffmesh-loadtest --target HOST:PORT (--count N | --duration S) [--concurrency N | --rate R]\n"
      "    [--tls-ca F [--tls-cert F --tls-key F]] [--token-file F]\n"
      "Drives GenerationService.Generate closed-loop (--concurrency) or open-loop (--rate, Poisson\n"
      "arrivals), after --warmup requests, and reports throughput, end-to-end and per-stage\n"
      "latency percentiles and errors by status code (a table, or --json). Exit code: 0 when every\n"
      "measured request succeeded, 1 when some failed, 2 on bad flags or an unreachable target.");
  diffmesh::loadtest::LoadOptions o;
  o.target = absl::GetFlag(FLAGS_target);
  if (!absl::GetFlag(FLAGS_tls_ca).empty() || !absl::GetFlag(FLAGS_tls_cert).empty() ||
      !absl::GetFlag(FLAGS_tls_key).empty()) {
    o.tls = diffmesh::sdk::TlsOptions{absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_cert),
                                      absl::GetFlag(FLAGS_tls_key), ""};
  }
  if (const std::string path = absl::GetFlag(FLAGS_token_file); !path.empty()) {
    auto token = diffmesh::ReadClientToken(path);
    if (!token.ok()) {
      std::cerr << "diffmesh-loadtest: --token-file: " << token.status().message() << "\n";
      return 2;
    }
    o.bearer_token = *std::move(token);
  }
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.rate = absl::GetFlag(FLAGS_rate);
  o.count = absl::GetFlag(FLAGS_count);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.arrival_seed = absl::GetFlag(FLAGS_arrival_seed);
  const double duration = absl::GetFlag(FLAGS_duration);
  const double timeout = absl::GetFlag(FLAGS_timeout);
  if (!std::isfinite(duration) || !std::isfinite(timeout) || !std::isfinite(o.rate)) {
    std::cerr << "diffmesh-loadtest: --duration, --timeout and --rate must be finite\n";
    return 2;
  }
  o.duration = absl::Seconds(duration);
  o.request_timeout = absl::Seconds(timeout);
  diffmesh::v1::GenerateRequest& r = o.request;
  r.set_prompt(absl::GetFlag(FLAGS_prompt));
  r.set_negative_prompt(absl::GetFlag(FLAGS_negative_prompt));
  r.set_model(absl::GetFlag(FLAGS_model));
  r.set_height(absl::GetFlag(FLAGS_height));
  r.set_width(absl::GetFlag(FLAGS_width));
  r.set_steps(absl::GetFlag(FLAGS_steps));
  if (absl::GetFlag(FLAGS_guidance_scale) >= 0) {
    r.mutable_guidance()->mutable_main()->set_cfg_scale(
        static_cast<float>(absl::GetFlag(FLAGS_guidance_scale)));
  }
  if (absl::GetFlag(FLAGS_seed) >= 0) r.set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  if (absl::Status s = diffmesh::loadtest::ValidateOptions(o); !s.ok()) {
    std::cerr << "diffmesh-loadtest: " << s.message() << "\n";
    return 2;
  }

  const double wait = absl::GetFlag(FLAGS_wait_for_server);
  if (wait > 0) {
    diffmesh::sdk::ClientOptions probe;
    probe.address = o.target;
    probe.tls = o.tls;
    probe.bearer_token = o.bearer_token;
    auto client = diffmesh::sdk::Client::Create(probe);
    if (!client.ok()) {
      std::cerr << "diffmesh-loadtest: " << client.status().message() << "\n";
      return 2;
    }
    // The service's status, not the process's (""): the orchestrator reports it SERVING only
    // once every stage it needs serves.
    absl::Status s =
        (*client)->WaitUntilServing(absl::Seconds(wait), "diffmesh.v1.GenerationService");
    if (!s.ok()) {
      std::cerr << "diffmesh-loadtest: " << o.target << " is not serving: " << s.message() << "\n";
      return 2;
    }
  }
  auto report = diffmesh::loadtest::RunLoad(o);
  if (!report.ok()) {
    std::cerr << "diffmesh-loadtest: " << report.status().message() << "\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << diffmesh::loadtest::ReportToJson(*report).dump(2) << std::endl;
  } else {
    std::cout << diffmesh::loadtest::ReportToTable(*report) << std::flush;
  }
  return report->failed == 0 ? 0 : 1;
}
