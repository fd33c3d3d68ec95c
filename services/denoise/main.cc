// diffmesh-denoise: a rank of the denoise group (DiT + VAE decode). Rank 0 serves
// DenoiseService over gRPC and, unless --launch_ranks=false, starts ranks 1..N-1 itself as
// local processes; the other ranks take their work from rank 0.
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/config/pipeline_config.h"
#include "common/flags/flags.h"
#include "common/metrics/families.h"
#include "common/metrics/metrics.h"
#include "common/process/subprocess.h"
#include "common/rpc/server.h"
#include "common/rpc/stage_token.h"
#include "common/rpc/tls_flags.h"
#include "models/parallel/comm_membership.h"
#include "services/denoise/denoise_core.h"
#include "services/denoise/denoise_group.h"
#include "services/denoise/denoise_service.h"
#include "services/stage_common/gpu_metrics.h"

ABSL_FLAG(int, port, 50054,
          "Port of the DenoiseService (rank 0; 0: a free port). Other ranks serve only gRPC "
          "health there (for probes: \"\" while the process runs, diffmesh.v1.DenoiseService "
          "while it is in a formed group); 0: none.");
ABSL_FLAG(std::string, host, "127.0.0.1",
          "Address to listen on (loopback by default: a stage serves the orchestrator only; "
          "0.0.0.0 or a pod IP to serve it from elsewhere, then with --stage-token-file).");
ABSL_FLAG(int, metrics_port, 0,
          "Port of this rank's Prometheus /metrics endpoint (on --host); 0: off. Rank 0 reports "
          "the request and step metrics, every rank its own step times (label rank). Ranks "
          "this process starts itself (--launch-ranks) keep theirs off: they share its host.");
ABSL_FLAG(std::string, model, "glm-image-tiny",
          "Built-in model to serve (without --model-dir): glm-image-tiny, ltx2-tiny, or "
          "ltx2.3-release-random (LTX-2.3 at its released sizes, random weights drawn on the "
          "GPU; --device cuda only).");
ABSL_FLAG(std::string, model_dir, "",
          "A snapshot directory in the diffusers layout (model_index.json, component configs, "
          "safetensors): a GlmImagePipeline or an LTX2Pipeline, told by model_index.json's "
          "_class_name, checked by tensor name, shape and dtype before serving; served under its "
          "own name. The orchestrator's pipeline config must list that name.");
ABSL_FLAG(absl::Duration, stream_idle_timeout, absl::Seconds(60),
          "A streamed request whose next input takes longer than this ends with "
          "DEADLINE_EXCEEDED and releases the group (e.g. 60s, 2m).");
ABSL_FLAG(absl::Duration, max_request_time, absl::Minutes(30),
          "The longest one call may run, whatever deadline the caller sent (none included): "
          "its work then ends with DEADLINE_EXCEEDED and releases the group, and its collective "
          "waits end with it. E.g. 10m, 1h; a video of the largest size and steps on one GPU "
          "takes minutes.");
ABSL_FLAG(int, cfg_degree, 1, "CFG-parallel degree: guidance branches spread over this many rank sets.");
ABSL_FLAG(int, ulysses_degree, 1, "Ulysses sequence-parallel degree (all-to-all over heads).");
ABSL_FLAG(int, ring_degree, 1, "Ring-attention sequence-parallel degree.");
ABSL_FLAG(int, tp_degree, 1, "Tensor-parallel degree (heads and MLP columns split).");
ABSL_FLAG(int, world_size, 0, "Ranks in the group; 0: tp × ulysses × ring × cfg.");
ABSL_FLAG(int, rank, 0, "This process's rank (0 serves gRPC).");
ABSL_FLAG(std::string, master_addr, "127.0.0.1",
          "Where the ranks reach rank 0's rendezvous store (rank 0 serves it on --host).");
ABSL_FLAG(int, master_port, 29500, "Port of rank 0's rendezvous store.");
ABSL_FLAG(std::string, device, "cpu", "cpu, or cuda (one GPU per rank: rank % visible GPUs, bf16, NCCL).");
ABSL_FLAG(bool, release_gpu_cache, true,
          "With --device cuda: after each call, rank 0 gives the GPU memory LibTorch's caching "
          "allocator keeps free (the steps' and the decode's activations) back to the device, so "
          "that an encoder sharing the GPU has it for the next request. false: keep it, slightly "
          "faster when the GPU is the stage's own.");
ABSL_FLAG(std::string, role, "denoise",
          "denoise: a rank of the denoise group (rank 0 also serves the model's \"upsample\" and "
          "\"decode\" stage kinds beside the group). decode: only the \"decode\" and "
          "\"upsample\" stage kinds, on one device, without the DiT or a group (a pipeline whose "
          "decode stage names this service decodes apart from the group, which meanwhile "
          "denoises the next request).");
ABSL_FLAG(std::vector<std::string>, lora, {},
          "LoRA adapters of the transformer (LTX-2), comma-separated name=path.safetensors "
          "entries, e.g. distilled=/models/ltx-2-19b-distilled-lora-384.safetensors; a pipeline "
          "stage applies one by name (its \"lora\" field).");
ABSL_FLAG(absl::Duration, heartbeat_interval, absl::Milliseconds(500),
          "How often each rank of a group of more than one writes its heartbeat to rank 0's "
          "store, and rank 0 reads them (> 0, e.g. 500ms). Every rank of a group takes the same "
          "value.");
ABSL_FLAG(absl::Duration, heartbeat_timeout, absl::Seconds(4),
          "A rank whose heartbeat has not advanced for this long is lost: the request in flight "
          "fails UNAVAILABLE naming it and the group re-forms when it is back (more than twice "
          "--heartbeat-interval, e.g. 4s). Shorter detects a lost rank sooner; a rank its host "
          "stalls for that long (swapping, an overloaded node) is then dropped too.");
ABSL_FLAG(bool, launch_ranks, true,
          "Rank 0 starts ranks 1..N-1 as local processes (set false when each rank is started "
          "separately, e.g. one per node or pod).");

namespace {

constexpr char kServiceName[] = "diffmesh.v1.DenoiseService";

// The group's health as the health service reports it: NOT_SERVING for kServiceName while the
// group is incomplete (rank 0) or this rank is outside a formed group (others). The group may
// report before the server exists; the server picks up the last state when it starts.
class GroupHealth {
 public:
  // Rank 0 starts serving (an engine without a DenoiseGroup never reports; one with a group
  // has reported by the time the server starts), the other ranks once in a group.
  explicit GroupHealth(bool serving) : serving_(serving) {}

  void Set(bool serving, const std::string& why) {
    std::lock_guard<std::mutex> lock(mu_);
    if (serving != serving_ && !why.empty()) std::cerr << "health: NOT_SERVING: " << why << std::endl;
    serving_ = serving;
    Apply();
  }
  void Attach(grpc::Server* server) {
    std::lock_guard<std::mutex> lock(mu_);
    server_ = server;
    Apply();
  }

 private:
  void Apply() {
    if (server_ != nullptr) server_->GetHealthCheckService()->SetServingStatus(kServiceName, serving_);
  }
  std::mutex mu_;
  bool serving_;
  grpc::Server* server_ = nullptr;
};

// Rank 0 with --launch-ranks: restarts a rank that exited (killed, OOM, lost rank 0's store),
// with a backoff growing from 1 s to 30 s while it keeps failing; the group re-forms with the
// new process. Ends with the process (the ranks die with it: PR_SET_PDEATHSIG).
// `health` turns NOT_SERVING the moment a rank is seen to exit, so that probes and the
// orchestrator see the outage from the start (the group reports SERVING again once re-formed).
void SuperviseRanks(std::vector<pid_t>* ranks, std::vector<std::vector<std::string>> args,
                    std::mutex* mu, GroupHealth* health) {
  const size_t n = ranks->size();
  std::vector<absl::Duration> backoff(n, absl::Seconds(1));
  std::vector<absl::Time> started(n, absl::Now());
  std::vector<absl::Time> restart_at(n, absl::InfiniteFuture());  // set while a rank is down
  while (true) {
    absl::SleepFor(absl::Milliseconds(200));
    std::lock_guard<std::mutex> lock(*mu);
    for (size_t i = 0; i < n; ++i) {
      int status = 0;
      if ((*ranks)[i] > 0 && diffmesh::Exited((*ranks)[i], &status)) {
        (*ranks)[i] = -1;
        // A rank that ran for a while before exiting starts over with a short backoff.
        if (absl::Now() - started[i] > absl::Minutes(1)) backoff[i] = absl::Seconds(1);
        restart_at[i] = absl::Now() + backoff[i];
        std::cerr << "diffmesh-denoise: rank " << i + 1 << " " << diffmesh::DescribeExit(status)
                  << "; restarting it in " << absl::FormatDuration(backoff[i]) << std::endl;
        health->Set(false, absl::StrCat("rank ", i + 1, " ", diffmesh::DescribeExit(status),
                                        "; restarting it"));
        backoff[i] = std::min(backoff[i] * 2, absl::Seconds(30));
      }
      if ((*ranks)[i] > 0 || absl::Now() < restart_at[i]) continue;
      auto pid = diffmesh::Spawn(args[i]);
      if (!pid.ok()) {
        std::cerr << "diffmesh-denoise: restarting rank " << i + 1 << ": " << pid.status().message() << std::endl;
        restart_at[i] = absl::Now() + backoff[i];
        continue;
      }
      (*ranks)[i] = *pid;
      started[i] = absl::Now();
      restart_at[i] = absl::InfiniteFuture();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Each request runs on its own thread, and glibc gives busy threads arenas of their own that
  // keep what they grew: a soak at a full queue held ~1.7 GB of RSS for work that needs ~0.35 GB
  // one request at a time, still growing at constant load; with two arenas it stayed flat at
  // ~0.9 GB (docs/BENCHMARKS.md, Soak). MALLOC_ARENA_MAX in the environment still decides.
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, 2);
  diffmesh::ParseFlags(argc, argv,
                       "diffmesh-denoise --port P [--model M | --model-dir DIR] [--cfg-degree C "
                       "--ulysses-degree U --ring-degree R --tp-degree T] [--role decode]\n"
                       "A rank of the denoise group: guided FlowMatch denoising with the model's "
                       "DiT (GLM-Image or LTX-2; CFG × sequence × tensor parallel); beside rank 0, "
                       "the model's decoders (VAE; for LTX-2 also the audio VAE, vocoder and MP4 "
                       "muxing) and latent upsampler as the \"decode\" and \"upsample\" stage "
                       "kinds. Rank 0 serves diffmesh.v1.DenoiseService. With --role decode, a "
                       "service of those two kinds alone.");
  diffmesh::BlockTerminationSignals();
  diffmesh::DenoiseCore::Options o;
  o.model = absl::GetFlag(FLAGS_model);
  o.model_dir = absl::GetFlag(FLAGS_model_dir);
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device != "cpu" && device != "cuda") {
    std::cerr << "diffmesh-denoise: --device must be cpu or cuda, not '" << device << "'\n";
    return 2;
  }
  o.cuda = device == "cuda";
  const std::string role = absl::GetFlag(FLAGS_role);
  if (role != "denoise" && role != "decode") {
    std::cerr << "diffmesh-denoise: --role must be denoise or decode, not '" << role << "'\n";
    return 2;
  }
  o.role = role == "decode" ? diffmesh::DenoiseCore::Options::Role::kDecode
                            : diffmesh::DenoiseCore::Options::Role::kDenoise;
  o.stream_idle_timeout = absl::GetFlag(FLAGS_stream_idle_timeout);
  if (o.stream_idle_timeout <= absl::ZeroDuration()) {
    std::cerr << "diffmesh-denoise: --stream_idle_timeout must be positive\n";
    return 2;
  }
  for (const std::string& entry : absl::GetFlag(FLAGS_lora)) {
    const size_t eq = entry.find('=');
    if (eq == 0 || eq == std::string::npos || eq + 1 == entry.size() ||
        !o.loras.emplace(entry.substr(0, eq), entry.substr(eq + 1)).second) {
      std::cerr << "diffmesh-denoise: --lora entry '" << entry
                << "' is not name=path with a new name\n";
      return 2;
    }
  }
  const absl::Duration max_request_time = absl::GetFlag(FLAGS_max_request_time);
  if (max_request_time <= absl::ZeroDuration()) {
    std::cerr << "diffmesh-denoise: --max-request-time must be positive\n";
    return 2;
  }
  o.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat_interval);
  o.heartbeat_timeout = absl::GetFlag(FLAGS_heartbeat_timeout);
  if (absl::Status s = diffmesh::models::parallel::CheckHeartbeat(o.heartbeat_interval,
                                                                 o.heartbeat_timeout);
      !s.ok()) {
    std::cerr << "diffmesh-denoise: --heartbeat-interval / --heartbeat-timeout: " << s.message()
              << "\n";
    return 2;
  }
  o.parallel.cfg = absl::GetFlag(FLAGS_cfg_degree);
  o.parallel.ulysses = absl::GetFlag(FLAGS_ulysses_degree);
  o.parallel.ring = absl::GetFlag(FLAGS_ring_degree);
  o.parallel.tp = absl::GetFlag(FLAGS_tp_degree);
  o.rendezvous.world_size =
      absl::GetFlag(FLAGS_world_size) > 0 ? absl::GetFlag(FLAGS_world_size) : o.parallel.world();
  if (o.role == diffmesh::DenoiseCore::Options::Role::kDecode && o.rendezvous.world_size != 1) {
    std::cerr << "diffmesh-denoise: --role decode runs on one device without a group; leave "
                 "the degrees and --world_size at 1\n";
    return 2;
  }
  o.rendezvous.rank = absl::GetFlag(FLAGS_rank);
  o.rendezvous.master_addr = absl::GetFlag(FLAGS_master_addr);
  o.rendezvous.master_port = absl::GetFlag(FLAGS_master_port);
  o.rendezvous.bind_addr = absl::GetFlag(FLAGS_host);
  const int rank = o.rendezvous.rank;
  const std::string who = absl::StrCat("diffmesh-denoise[rank ", rank, "]");
  // Only rank 0 serves gRPC; it checks the TLS files before starting any rank or loading weights.
  std::optional<diffmesh::ServerTls> tls;
  std::unique_ptr<diffmesh::TokenAuthenticator> stage_auth;
  if (rank == 0) {
    auto loaded = diffmesh::ServerTlsFromFlags();
    if (!loaded.ok()) {
      std::cerr << who << ": " << loaded.status().message() << "\n";
      return 2;
    }
    tls = *std::move(loaded);
    auto auth = diffmesh::StageAuthenticatorFromFlags();
    if (!auth.ok()) {
      std::cerr << who << ": " << auth.status().message() << "\n";
      return 2;
    }
    stage_auth = *std::move(auth);
  }

  GroupHealth health(/*serving=*/rank == 0);
  diffmesh::SetDenoiseGroupHealthListener(
      [&health](bool serving, const std::string& why) { health.Set(serving, why); });

  std::vector<pid_t> ranks;
  std::vector<std::vector<std::string>> rank_args;
  std::mutex ranks_mu;
  if (rank == 0 && o.rendezvous.world_size > 1 && absl::GetFlag(FLAGS_launch_ranks)) {
    for (int r = 1; r < o.rendezvous.world_size; ++r) {
      std::vector<std::string> args(argv, argv + argc);
      args[0] = "/proc/self/exe";
      args.push_back(absl::StrCat("--rank=", r));
      args.push_back("--launch_ranks=false");
      // Ranks started here share this host and its ports: only rank 0 serves /metrics and
      // health. (Ranks started one per machine or pod, e.g. by the Helm chart, each serve
      // their own.)
      args.push_back("--metrics_port=0");
      args.push_back("--port=0");
      auto pid = diffmesh::Spawn(args);
      if (!pid.ok()) {
        std::cerr << who << ": " << pid.status().message() << "\n";
        diffmesh::StopAll(ranks);
        return 1;
      }
      ranks.push_back(*pid);
      rank_args.push_back(std::move(args));
    }
  }
  // Ranks > 0 serve gRPC health (for probes) from the start: "" SERVING while the process
  // runs (it may load weights and wait for rank 0 for a while), kServiceName while in a group.
  std::unique_ptr<diffmesh::RunningServer> worker_health;
  if (rank != 0 && absl::GetFlag(FLAGS_port) > 0) {
    diffmesh::ServerOptions options;
    options.host = absl::GetFlag(FLAGS_host);
    options.port = absl::GetFlag(FLAGS_port);
    options.health_service_names = {"diffmesh.v1.DenoiseService"};  // = kServiceName
    options.start_not_serving = true;
    auto server = diffmesh::RunningServer::Start({}, options);
    if (server.ok()) {
      worker_health = *std::move(server);
      health.Attach(worker_health->server());
      std::cout << who << " health on " << options.host << ":" << worker_health->port() << std::endl;
    } else {  // the rank works without it; its probes (if any) say so
      std::cerr << who << ": no health service: " << server.status().message() << std::endl;
    }
  }
  // Every rank serves its own step times (labelled with its rank) where it has a metrics port;
  // rank 0 also the request metrics.
  auto exposer = diffmesh::metrics::StartMetricsExposer(
      "diffmesh-denoise", absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port));
  if (!exposer.ok()) {
    std::cerr << who << ": " << exposer.status().message() << "\n";
    diffmesh::StopAll(ranks);
    return 2;
  }
  // The name the model is served under: a snapshot's own name, else the built-in model's.
  std::string model_label = o.model;
  if (!o.model_dir.empty()) {
    auto name = diffmesh::SnapshotModelName(o.model_dir);
    model_label = name.ok() ? *name : o.model_dir;
  }
  std::optional<diffmesh::metrics::DenoiseRankFamilies> rank_families;
  if (*exposer != nullptr) {
    if (auto gpu = diffmesh::GpuMemoryCollector()) (*exposer)->Add(std::move(gpu));
    rank_families.emplace((*exposer)->registry());
    prometheus::Histogram* steps = &rank_families->step_duration.Add(
        {{"model", model_label}, {"rank", std::to_string(rank)}},
        diffmesh::metrics::StepBuckets());
    o.on_step = [steps](double seconds) { steps->Observe(seconds); };
  }
  auto core = diffmesh::DenoiseCore::Create(o);
  if (!core.ok()) {
    std::cerr << who << ": " << core.status().message() << "\n";
    diffmesh::StopAll(ranks);
    return 2;
  }
  if (rank != 0) {
    // SIGTERM / SIGINT end a worker at once: its state is rank 0's to rebuild, and a
    // collective it waits in cannot be unwound from here.
    std::thread([who] {
      const int sig = diffmesh::WaitForTerminationSignal();
      std::cerr << who << ": signal " << sig << ", exiting" << std::endl;
      std::_Exit(0);
    }).detach();
    while (true) {
      // A request that failed with the group (a lost rank) ends here; the next RunWorker
      // joins the group's next generation once rank 0 re-forms it. kStop ends it with OK.
      absl::Status s = (*core)->RunWorker();
      if (s.ok()) return 0;
      std::cerr << who << ": " << s.message() << "\n";
      if (absl::IsCancelled(s) || absl::IsFailedPrecondition(s)) return 1;
    }
  }
  diffmesh::DenoiseService service(core->get(), *exposer ? &(*exposer)->registry() : nullptr,
                                   model_label);
  service.set_authenticator(stage_auth.get());
  service.set_max_request_time(max_request_time);
  service.set_release_gpu_cache(o.cuda && absl::GetFlag(FLAGS_release_gpu_cache));
  diffmesh::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.health_service_names = {"diffmesh.v1.DenoiseService"};  // = kServiceName
  options.start_not_serving = true;  // until the group says it is whole
  options.tls = std::move(tls);
  auto server = diffmesh::RunningServer::Start({&service}, options);
  if (!server.ok()) {
    std::cerr << who << ": " << server.status().message() << std::endl;
    std::lock_guard<std::mutex> lock(ranks_mu);
    diffmesh::StopAll(ranks);
    return 1;
  }
  health.Attach((*server)->server());
  std::cout << "diffmesh-denoise serving on " << options.host << ":" << (*server)->port()
            << (!options.tls ? "" : options.tls->client_ca.empty() ? " (TLS)" : " (mutual TLS)")
            << std::endl;
  if (!ranks.empty()) {
    std::thread(SuperviseRanks, &ranks, rank_args, &ranks_mu, &health).detach();
  }
  const int sig = diffmesh::WaitForTerminationSignal();
  std::cout << "diffmesh-denoise: signal " << sig << ", shutting down" << std::endl;
  (*server)->Shutdown();
  health.Attach(nullptr);
  std::lock_guard<std::mutex> lock(ranks_mu);  // the supervisor restarts nothing from here on
  core->reset();  // tells the other ranks to stop
  diffmesh::StopAll(ranks);
  return 0;
}
