// bench_e2e: end-to-end GLM-Image generations, each stage's time and the total, either with
// every stage in this process (the embedded path of `diffmesh generate`) or through a running
// orchestrator (--server, the mesh). Both paths measure the same way: the orchestrator's own
// per-stage timings and total from the result metadata, plus the caller's wall time. Warm-up
// requests (CUDA-graph capture, allocator growth) are run first and not counted.
// Prints FINAL {json}.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <vector>

#include "absl/flags/flag.h"
#include "common/config/pipeline_config.h"
#include "common/flags/flags.h"
#include "diffmesh/client.h"
#include "nlohmann/json.hpp"
#include "services/embedded/embedded_stages.h"
#include "services/orchestrator/orchestrator_core.h"

ABSL_FLAG(std::string, model_dir, "", "GlmImagePipeline snapshot to serve (embedded path).");
ABSL_FLAG(std::string, model, "glm-image-tiny", "Built-in model (embedded path, without --model-dir).");
ABSL_FLAG(std::string, server, "", "Orchestrator HOST:PORT: measure through the mesh instead.");
ABSL_FLAG(std::string, device, "cuda", "Embedded path: cpu or cuda.");
ABSL_FLAG(int, requests, 3, "Timed requests (one after another).");
ABSL_FLAG(int, warmup, 1, "Untimed requests first.");
ABSL_FLAG(int, height, 1024, "Image height.");
ABSL_FLAG(int, width, 1024, "Image width.");
ABSL_FLAG(int, steps, 50, "Denoising steps.");
ABSL_FLAG(std::string, prompt, "A lighthouse on a cliff at dusk, a sign that says \"diffmesh\"",
          "Prompt.");

namespace diffmesh {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int Run() {
  v1::GenerateRequest request;
  request.set_prompt(absl::GetFlag(FLAGS_prompt));
  request.set_height(absl::GetFlag(FLAGS_height));
  request.set_width(absl::GetFlag(FLAGS_width));
  request.set_steps(absl::GetFlag(FLAGS_steps));
  request.set_seed(7);

  std::function<absl::StatusOr<v1::GenerateResult>()> generate;
  std::unique_ptr<EmbeddedStages> stages;
  std::unique_ptr<OrchestratorCore> core;
  std::unique_ptr<sdk::Client> client;
  nlohmann::json out;
  const std::string server = absl::GetFlag(FLAGS_server);
  const auto load0 = Clock::now();
  if (server.empty()) {
    const std::string dir = absl::GetFlag(FLAGS_model_dir);
    auto pipeline = dir.empty() ? PipelineConfig::Parse(PipelineConfig::DefaultJson())
                                : PipelineConfig::ForSnapshot(dir);
    if (!pipeline.ok()) {
      std::cerr << "bench_e2e: " << pipeline.status() << "\n";
      return 2;
    }
    EmbeddedStages::Options o;
    o.model = dir.empty() ? absl::GetFlag(FLAGS_model) : pipeline->default_model;
    o.model_dir = dir;
    o.cuda = absl::GetFlag(FLAGS_device) == "cuda";
    auto s = EmbeddedStages::Create(o);
    if (!s.ok()) {
      std::cerr << "bench_e2e: " << s.status() << "\n";
      return 1;
    }
    stages = std::move(*s);
    auto c = OrchestratorCore::Create({*pipeline, stages.get(), nullptr});
    if (!c.ok()) {
      std::cerr << "bench_e2e: " << c.status() << "\n";
      return 1;
    }
    core = std::move(*c);
    request.set_model(o.model);
    generate = [&]() -> absl::StatusOr<v1::GenerateResult> {
      CallContext ctx;
      v1::GenerateResult result;
      absl::Status st = core->Generate(ctx, request, [&](const v1::GenerateEvent& e) {
        if (e.has_result()) result = e.result();
      });
      if (!st.ok()) return st;
      return result;
    };
    out["path"] = "embedded";
    out["load_seconds"] = std::chrono::duration<double>(Clock::now() - load0).count();
  } else {
    sdk::ClientOptions o;
    o.address = server;
    auto c = sdk::Client::Create(o);
    if (!c.ok()) {
      std::cerr << "bench_e2e: " << c.status() << "\n";
      return 1;
    }
    client = std::move(*c);
    absl::Status serving = client->WaitUntilServing(absl::Minutes(20));
    if (!serving.ok()) {
      std::cerr << "bench_e2e: " << serving << "\n";
      return 1;
    }
    generate = [&]() { return client->Generate(request); };
    out["path"] = "mesh";
  }

  std::map<std::string, std::vector<double>> stage;
  std::vector<double> total, wall;
  const int warmup = absl::GetFlag(FLAGS_warmup), n = absl::GetFlag(FLAGS_requests);
  for (int i = 0; i < warmup + n; ++i) {
    const auto t0 = Clock::now();
    auto r = generate();
    const double w = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!r.ok()) {
      std::cerr << "bench_e2e: request " << i << ": " << r.status() << "\n";
      return 1;
    }
    const auto& m = r->metadata();
    std::cerr << (i < warmup ? "warm-up " : "request ") << i << ": " << w << " s wall, "
              << m.total_seconds() << " s total:";
    for (const auto& t : m.stage_timings()) std::cerr << " " << t.stage() << " " << t.seconds();
    std::cerr << "\n";
    if (i < warmup) continue;
    for (const auto& t : m.stage_timings()) stage[t.stage()].push_back(t.seconds());
    total.push_back(m.total_seconds());
    wall.push_back(w);
    out["model"] = m.model();
  }
  for (const auto& [name, v] : stage) out["stage_seconds"][name] = Median(v);
  out["total_seconds"] = Median(total);
  out["wall_seconds"] = Median(wall);
  out["requests"] = n;
  out["height"] = request.height();
  out["width"] = request.width();
  out["steps"] = request.steps();
  std::cout << "FINAL " << out.dump() << "\n";
  return 0;
}

}  // namespace
}  // namespace diffmesh

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
                       "bench_e2e [--model-dir DIR | --server HOST:PORT] [--requests 3]\n"
                       "Times whole GLM-Image generations, embedded or through the mesh.");
  return diffmesh::Run();
}
