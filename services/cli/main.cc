// diffmesh: generate images (embedded or through a running orchestrator), start a local
// mesh, list models.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/config/pipeline_config.h"
#include "common/rpc/server.h"
#include "common/safetensors/safetensors.h"
#include "common/tensor/wire_tensor.h"
#include "diffmesh/client.h"
#include "services/cli/args.h"
#include "services/cli/mesh.h"
#include "services/cli/progress.h"
#include "services/cli/security_flags.h"
#include "services/embedded/embedded_stages.h"
#include "services/orchestrator/orchestrator_core.h"

namespace diffmesh::cli {
namespace {

const std::vector<FlagSpec> kGenerateFlags = {
    {"prompt", "TEXT", "what to draw (quoted text in it is rendered as glyphs)"},
    {"negative-prompt", "TEXT", "what to steer away from"},
    {"model", "NAME", "model to use (default: the pipeline's default, glm-image-tiny)"},
    {"model-dir", "DIR", "embedded: serve the GlmImagePipeline snapshot in DIR (diffusers layout, "
                         "e.g. a download of zai-org/GLM-Image) instead of a built-in model"},
    {"height", "PX", "image height in pixels (default: the model's)"},
    {"width", "PX", "image width in pixels (default: the model's)"},
    {"steps", "N", "denoising steps, 1..200 (default: the model's)"},
    {"guidance-scale", "G", "classifier-free guidance, finite and >= 0 (default: the model's)"},
    {"seed", "X", "random seed (default: drawn and printed)"},
    {"output", "FILE.png", "where to write the PNG (required)"},
    {"server", "HOST:PORT", "run through this orchestrator instead of in this process"},
    {"timeout", "SECONDS", "give up after this long (default 1800)"},
    {"save-latents", "FILE.safetensors", "also write the final latents (tensor 'latents')"},
    {"cfg-degree", "C", "embedded: CFG-parallel ranks of the denoise group (default 1)"},
    {"ulysses-degree", "U", "embedded: Ulysses sequence-parallel degree (default 1)"},
    {"ring-degree", "R", "embedded: ring-attention sequence-parallel degree (default 1)"},
    {"tp-degree", "T", "embedded: tensor-parallel degree (default 1)"},
    {"device", "cpu|cuda", "embedded: where the AR model and the denoise ranks compute (default cpu)"},
};
const std::vector<FlagSpec> kUpFlags = {
    {"base-port", "P", "orchestrator on P, AR/encoder/denoise on P+1..P+3 (default 50051); "
                       "their /metrics on P+10..P+13"},
    {"model", "NAME", "built-in model the stages load (default glm-image-tiny)"},
    {"model-dir", "DIR", "the stages serve the GlmImagePipeline snapshot in DIR instead"},
    {"bin-dir", "DIR", "folder of the diffmesh-* service binaries (default: found beside diffmesh)"},
    {"cfg-degree", "C", "CFG-parallel ranks of the denoise group (default 1)"},
    {"ulysses-degree", "U", "Ulysses sequence-parallel degree (default 1)"},
    {"ring-degree", "R", "ring-attention sequence-parallel degree (default 1)"},
    {"tp-degree", "T", "tensor-parallel degree (default 1)"},
    {"device", "cpu|cuda", "where the AR service and the denoise ranks compute (default cpu)"},
};
const std::vector<FlagSpec> kModelsFlags = {
    {"server", "HOST:PORT", "ask this orchestrator instead of the built-in pipeline"},
};

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: diffmesh <command> [flags]\n\n"
               "commands:\n"
               "  generate   generate an image; embedded (all stages in this process) unless --server\n"
               "  up         start the four services on loopback and keep them running until Ctrl-C\n"
               "  models     list the configured models\n\n"
               "generate flags:\n%s\nup flags:\n%s\nmodels flags:\n%s\n"
               "TLS and API token of generate / models with --server:\n%s\n"
               "TLS and API token of up (handed to the services it starts):\n%s",
               FlagHelp(kGenerateFlags).c_str(), FlagHelp(kUpFlags).c_str(),
               FlagHelp(kModelsFlags).c_str(), FlagHelp(ClientSecurityFlags()).c_str(),
               FlagHelp(MeshSecurityFlags()).c_str());
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "diffmesh: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound ? 2 : 1;
}

absl::StatusOr<v1::GenerateRequest> BuildRequest(const Args& args) {
  v1::GenerateRequest r;
  if (!args.Has("prompt")) return absl::InvalidArgumentError("--prompt is required");
  if (!args.Has("output")) return absl::InvalidArgumentError("--output is required");
  r.set_prompt(args.Get("prompt"));
  r.set_negative_prompt(args.Get("negative-prompt"));
  r.set_model(args.Get("model"));
  for (const char* f : {"height", "width", "steps"}) {
    auto v = args.GetInt(f);
    if (!v.ok()) return v.status();
    if (!v->has_value()) continue;
    if (**v < INT32_MIN || **v > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(f, ": ", **v, " is out of range"));
    }
    const int32_t x = static_cast<int32_t>(**v);
    if (std::string(f) == "height") r.set_height(x);
    if (std::string(f) == "width") r.set_width(x);
    if (std::string(f) == "steps") {
      // 0 means "the model's default" on the wire; an explicit 0 is a user error.
      if (x == 0) return absl::InvalidArgumentError("steps: 0 is outside 1..200");
      r.set_steps(x);
    }
  }
  auto g = args.GetDouble("guidance-scale");
  if (!g.ok()) return g.status();
  if (g->has_value()) r.set_guidance_scale(static_cast<float>(**g));
  auto seed = args.GetInt("seed");
  if (!seed.ok()) return seed.status();
  if (seed->has_value()) {
    if (**seed < 0) return absl::InvalidArgumentError("seed: must be >= 0");
    r.set_seed(static_cast<uint64_t>(**seed));
  }
  return r;
}

// The denoise group's degrees from --cfg-degree / --ulysses-degree / --ring-degree / --tp-degree.
absl::StatusOr<models::parallel::ParallelConfig> ParallelFlags(const Args& args) {
  models::parallel::ParallelConfig p;
  for (auto [flag, field] : {std::pair{"cfg-degree", &p.cfg}, std::pair{"ulysses-degree", &p.ulysses},
                             std::pair{"ring-degree", &p.ring}, std::pair{"tp-degree", &p.tp}}) {
    auto v = args.GetInt(flag);
    if (!v.ok()) return v.status();
    if (v->has_value()) {
      if (**v < 1 || **v > 64) return absl::InvalidArgumentError(absl::StrCat(flag, ": must be in 1..64"));
      *field = static_cast<int>(**v);
    }
  }
  return p;
}

absl::Status WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) return absl::DataLossError(absl::StrCat("short write to ", path));
  return absl::OkStatus();
}

// Cancels `ctx` / `cancel` on SIGINT or SIGTERM (blocked in main, waited for here).
class SignalCanceller {
 public:
  explicit SignalCanceller(std::function<void()> cancel)
      : thread_([cancel = std::move(cancel), this] {
          sigset_t set;
          sigemptyset(&set);
          sigaddset(&set, SIGINT);
          sigaddset(&set, SIGTERM);
          sigaddset(&set, SIGUSR1);
          int sig = 0;
          sigwait(&set, &sig);
          if (sig != SIGUSR1) {
            std::fprintf(stderr, "\ndiffmesh: interrupted, cancelling\n");
            cancel();
          }
        }) {}
  ~SignalCanceller() {
    pthread_kill(thread_.native_handle(), SIGUSR1);
    thread_.join();
  }

 private:
  std::thread thread_;
};

int Generate(const std::vector<std::string>& argv) {
  auto args = Args::Parse(argv, WithFlags(kGenerateFlags, ClientSecurityFlags()));
  if (!args.ok()) return Fail(args.status());
  auto request = BuildRequest(*args);
  if (!request.ok()) return Fail(request.status());
  auto timeout = args->GetDouble("timeout");
  if (!timeout.ok()) return Fail(timeout.status());
  auto parallel = ParallelFlags(*args);
  if (!parallel.ok()) return Fail(parallel.status());
  if (args->Has("server") && parallel->world() > 1) {
    return Fail(absl::InvalidArgumentError(
        "--*-degree flags shape the embedded denoise group; a server's group is set where it runs"));
  }
  const std::string device = args->Get("device", "cpu");
  if (device != "cpu" && device != "cuda") {
    return Fail(absl::InvalidArgumentError("device: must be cpu or cuda"));
  }
  if (args->Has("server") && (args->Has("model-dir") || args->Has("device"))) {
    return Fail(absl::InvalidArgumentError(
        "--model-dir and --device shape the embedded stages; a server serves what it was started "
        "with (pick its model with --model)"));
  }
  request->set_include_latents(args->Has("save-latents"));
  const absl::Duration limit = absl::Seconds(timeout->value_or(1800));
  ProgressPrinter progress(stderr, isatty(STDERR_FILENO));
  auto on_event = [&](const v1::GenerateEvent& e) { progress.OnEvent(e); };
  v1::GenerateResult result;

  auto remote = ServerClientOptions(*args);
  if (!remote.ok()) return Fail(remote.status());
  if (remote->has_value()) {
    auto client = sdk::Client::Create(**remote);
    if (!client.ok()) return Fail(client.status());
    sdk::CancelHandle cancel;
    SignalCanceller canceller([&] { cancel.Cancel(); });
    auto r = (*client)->Generate(*request, on_event, &cancel, limit);
    if (!r.ok()) return Fail(r.status());
    result = std::move(*r);
  } else {
    const std::string model_dir = args->Get("model-dir");
    auto pipeline = model_dir.empty() ? PipelineConfig::Parse(PipelineConfig::DefaultJson())
                                      : PipelineConfig::ForSnapshot(model_dir);
    if (!pipeline.ok()) return Fail(pipeline.status());
    // Check the request before loading any model.
    auto accepted = ValidateRequest(*pipeline, *request);
    if (!accepted.ok()) return Fail(accepted.status());
    OrchestratorCore::Options o;
    o.pipeline = *pipeline;
    EmbeddedStages::Options embedded;
    embedded.model = accepted->model();
    embedded.model_dir = model_dir;
    embedded.parallel = *parallel;
    embedded.cuda = device == "cuda";
    auto stages = EmbeddedStages::Create(embedded);
    if (!stages.ok()) return Fail(stages.status());
    o.stages = stages->get();
    auto core = OrchestratorCore::Create(o);
    if (!core.ok()) return Fail(core.status());
    CallContext ctx(absl::Now() + limit);
    SignalCanceller canceller([&] { ctx.Cancel(); });
    absl::Status s = (*core)->Generate(ctx, *request, [&](const v1::GenerateEvent& e) {
      on_event(e);
      if (e.has_result()) result = e.result();
    });
    if (!s.ok()) return Fail(s);
  }
  const std::string output = args->Get("output");
  if (absl::Status s = WriteFile(output, result.png()); !s.ok()) return Fail(s);
  if (args->Has("save-latents")) {
    const v1::Tensor& l = result.latents();
    if (absl::Status s = ValidateTensor(l, "latents", DType::kFloat32); !s.ok()) return Fail(s);
    OwnedTensor t{DType::kFloat32, std::vector<int64_t>(l.shape().begin(), l.shape().end()), l.data()};
    if (absl::Status s = WriteSafetensors(args->Get("save-latents"), {{"latents", t}}); !s.ok()) {
      return Fail(s);
    }
  }
  const auto& m = result.metadata();
  std::printf("wrote %s (%dx%d, seed %llu)\n", output.c_str(), m.width(), m.height(),
              static_cast<unsigned long long>(m.seed()));
  return 0;
}

int Up(const std::vector<std::string>& argv) {
  auto args = Args::Parse(argv, WithFlags(kUpFlags, MeshSecurityFlags()));
  if (!args.ok()) return Fail(args.status());
  MeshOptions o;
  auto port = args->GetInt("base-port");
  if (!port.ok()) return Fail(port.status());
  if (port->has_value()) {
    if (**port < 1 || **port > 65535 - 13) return Fail(absl::InvalidArgumentError("base-port: out of range"));
    o.base_port = static_cast<int>(**port);
  }
  o.model = args->Get("model", o.model);
  o.model_dir = args->Get("model-dir");
  if (!o.model_dir.empty()) {
    // Fail here, with the reason, rather than in four services' logs.
    auto name = SnapshotModelName(o.model_dir);
    if (!name.ok()) return Fail(name.status());
    if (args->Has("model")) {
      return Fail(absl::InvalidArgumentError("--model and --model-dir: give one"));
    }
  }
  o.bin_dir = args->Get("bin-dir");
  o.device = args->Get("device", "cpu");
  if (o.device != "cpu" && o.device != "cuda") {
    return Fail(absl::InvalidArgumentError("device: must be cpu or cuda"));
  }
  auto parallel = ParallelFlags(*args);
  if (!parallel.ok()) return Fail(parallel.status());
  o.parallel = *parallel;
  if (absl::Status s = ApplyMeshSecurity(*args, &o); !s.ok()) return Fail(s);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return RunMesh(o);
}

int Models(const std::vector<std::string>& argv) {
  auto args = Args::Parse(argv, WithFlags(kModelsFlags, ClientSecurityFlags()));
  if (!args.ok()) return Fail(args.status());
  v1::ListModelsResponse models;
  auto remote = ServerClientOptions(*args);
  if (!remote.ok()) return Fail(remote.status());
  if (remote->has_value()) {
    auto client = sdk::Client::Create(**remote);
    if (!client.ok()) return Fail(client.status());
    auto r = (*client)->ListModels();
    if (!r.ok()) return Fail(r.status());
    models = *r;
  } else {
    auto pipeline = PipelineConfig::Parse(PipelineConfig::DefaultJson());
    if (!pipeline.ok()) return Fail(pipeline.status());
    models = DescribeModels(*pipeline);
  }
  for (const auto& m : models.models()) {
    std::string stages;
    for (const auto& s : m.stages()) stages += (stages.empty() ? "" : ",") + s;
    std::printf("%s%s\n  %s\n  default %dx%d, %d steps, guidance %.2f; sizes %d..%d in multiples of %d; stages %s\n",
                m.name().c_str(), m.name() == models.default_model() ? " (default)" : "",
                m.description().c_str(), m.default_width(), m.default_height(), m.default_steps(),
                m.default_guidance_scale(), m.min_size(), m.max_size(), m.pixel_granularity(),
                stages.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace diffmesh::cli

int main(int argc, char** argv) {
  using namespace diffmesh::cli;
  diffmesh::BlockTerminationSignals();
  // SIGUSR1 wakes the signal-waiting thread when a command ends; blocked like the others.
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &usr1, nullptr);
  if (argc < 2) {
    Usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> rest(argv + 2, argv + argc);
  for (const auto& a : rest) {
    if (a == "--help" || a == "-h") {
      Usage(stdout);
      return 0;
    }
  }
  if (cmd == "generate") return Generate(rest);
  if (cmd == "up") return Up(rest);
  if (cmd == "models") return Models(rest);
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    Usage(stdout);
    return 0;
  }
  std::fprintf(stderr, "diffmesh: unknown command '%s'\n\n", cmd.c_str());
  Usage(stderr);
  return 2;
}
