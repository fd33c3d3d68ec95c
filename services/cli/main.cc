// diffmesh: generate images (embedded or through a running orchestrator), start a local
// mesh, list models.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/config/pipeline_config.h"
#include "common/file/file.h"
#include "common/output/output_chunks.h"
#include "common/status/status_macros.h"
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

// Largest input image file the CLI reads (--image, --first-frame); the model's own limit,
// usually smaller, is the server's.
constexpr size_t kMaxInputFileBytes = 64 << 20;

const std::vector<FlagSpec> kGenerateFlags = {
    {"prompt", "TEXT", "what to draw (quoted text in it is rendered as glyphs)"},
    {"negative-prompt", "TEXT", "what to steer away from"},
    {"model", "NAME", "model to use (default: the pipeline's default, glm-image-tiny)"},
    {"model-dir", "DIR", "embedded: serve the snapshot in DIR (diffusers layout: a "
                         "GlmImagePipeline such as zai-org/GLM-Image, or an LTX2Pipeline; "
                         "model_index.json tells which) instead of a built-in model"},
    {"height", "PX", "image height in pixels (default: the model's)"},
    {"width", "PX", "image width in pixels (default: the model's)"},
    {"steps", "N", "denoising steps (default: the model's; `diffmesh models` lists the range)"},
    {"image", "FILE", "a PNG, JPEG or WebP image to edit (models that edit images)"},
    {"first-frame", "FILE", "video models: a PNG, JPEG or WebP image to start the video from"},
    {"num-frames", "N", "video models: frames (default: the model's)"},
    {"frame-rate", "FPS", "video models: frames per second (default: the model's)"},
    {"guidance-scale", "G", "classifier-free guidance scale, 0..100 (default: the model's)"},
    {"stg-scale", "S", "spatio-temporal guidance scale where the model has it (default: the model's)"},
    {"seed", "X", "random seed, 0..2^64-1 (default: drawn and printed)"},
    {"output", "FILE", "where to write the result (required); its extension picks the format: "
                       ".png, .jpg/.jpeg, .webp, .mp4, or .safetensors for the final latents "
                       "(another extension: the model's own format)"},
    {"output-format", "F", "png, jpeg, webp, mp4, raw or latents, overriding the extension "
                           "(raw and latents are written as .safetensors)"},
    {"quality", "Q", "JPEG 1..100, WebP 0..100 (100: lossless)"},
    {"server", "HOST:PORT", "run through this orchestrator instead of in this process"},
    {"timeout", "SECONDS", "give up after this long (default 1800)"},
    {"cfg-degree", "C", "embedded: CFG-parallel ranks of the denoise group (default 1)"},
    {"ulysses-degree", "U", "embedded: Ulysses sequence-parallel degree (default 1)"},
    {"ring-degree", "R", "embedded: ring-attention sequence-parallel degree (default 1)"},
    {"tp-degree", "T", "embedded: tensor-parallel degree (default 1)"},
    {"device", "cpu|cuda", "embedded: where the AR model and the denoise ranks compute (default cpu)"},
};
const std::vector<FlagSpec> kUpFlags = {
    {"base-port", "P", "orchestrator on P, AR/encoder/denoise on P+1..P+3 (default 50051); "
                       "their /metrics on P+10..P+13"},
    {"model", "NAME", "built-in model the stages load (default glm-image-tiny; ltx2-tiny: video with "
                      "sound, no AR service; ltx2.3-release-random: LTX-2.3 at its released "
                      "sizes, random weights, --device cuda only)"},
    {"model-dir", "DIR", "the stages serve the snapshot in DIR instead (GlmImagePipeline or "
                         "LTX2Pipeline, told by its model_index.json)"},
    {"pipeline", "FILE", "the orchestrator runs the pipeline config in FILE (stage graphs, limits, "
                         "defaults; e.g. common/config/ltx2_two_stage_pipeline.json) instead of "
                         "the built-in one; the stages load --model, by default the file's "
                         "default_model; not with --model-dir"},
    {"bin-dir", "DIR", "folder of the diffmesh-* service binaries (default: found beside diffmesh)"},
    {"cfg-degree", "C", "CFG-parallel ranks of the denoise group (default 1)"},
    {"ulysses-degree", "U", "Ulysses sequence-parallel degree (default 1)"},
    {"ring-degree", "R", "ring-attention sequence-parallel degree (default 1)"},
    {"tp-degree", "T", "tensor-parallel degree (default 1)"},
    {"device", "cpu|cuda", "where the stage services compute: AR, the LTX-2 text encoder, the "
                           "denoise ranks (default cpu)"},
    {"start-timeout", "SECONDS", "how long each service may take to load and report SERVING "
                                 "(default 120)"},
};
const std::vector<FlagSpec> kModelsFlags = {
    {"server", "HOST:PORT", "ask this orchestrator instead of the built-in pipeline"},
};

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: diffmesh <command> [flags]\n\n"
               "commands:\n"
               "  generate   generate an image or a video; embedded (all stages in this process) unless --server\n"
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

// --output-format, else the format --output's extension names.
absl::StatusOr<v1::OutputFormat> OutputFormatOf(const std::string& flag, const std::string& path) {
  static const std::vector<std::pair<std::string, v1::OutputFormat>> kNames = {
      {"png", v1::OUTPUT_FORMAT_PNG},   {"jpeg", v1::OUTPUT_FORMAT_JPEG},
      {"jpg", v1::OUTPUT_FORMAT_JPEG},  {"webp", v1::OUTPUT_FORMAT_WEBP},
      {"mp4", v1::OUTPUT_FORMAT_MP4},   {"raw", v1::OUTPUT_FORMAT_RAW},
      {"latents", v1::OUTPUT_FORMAT_LATENTS}, {"safetensors", v1::OUTPUT_FORMAT_LATENTS}};
  std::string name = flag;
  if (name.empty()) {
    const size_t dot = path.rfind('.');
    name = dot == std::string::npos ? "" : absl::AsciiStrToLower(path.substr(dot + 1));
  }
  for (const auto& [n, f] : kNames) {
    if (n == name) return f;
  }
  if (flag.empty()) return v1::OUTPUT_FORMAT_UNSPECIFIED;  // the model's own format
  return absl::InvalidArgumentError(absl::StrCat("output-format: unknown format '", flag,
                                                 "' (png, jpeg, webp, mp4, raw, latents)"));
}

absl::StatusOr<v1::GenerateRequest> BuildRequest(const Args& args) {
  v1::GenerateRequest r;
  if (!args.Has("prompt")) return absl::InvalidArgumentError("--prompt is required");
  if (!args.Has("output")) return absl::InvalidArgumentError("--output is required");
  r.set_prompt(args.Get("prompt"));
  r.set_negative_prompt(args.Get("negative-prompt"));
  r.set_model(args.Get("model"));
  for (const char* f : {"height", "width", "steps", "num-frames", "quality"}) {
    auto v = args.GetInt(f);
    if (!v.ok()) return v.status();
    if (!v->has_value()) continue;
    if (**v < INT32_MIN || **v > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(f, ": ", **v, " is out of range"));
    }
    const int32_t x = static_cast<int32_t>(**v);
    const std::string flag = f;
    if (flag == "height") r.set_height(x);
    if (flag == "width") r.set_width(x);
    if (flag == "steps") r.set_steps(x);
    if (flag == "num-frames") r.set_num_frames(x);
    if (flag == "quality") r.mutable_output()->set_quality(x);
  }
  for (const char* f : {"guidance-scale", "stg-scale", "frame-rate"}) {
    auto v = args.GetDouble(f);
    if (!v.ok()) return v.status();
    if (!v->has_value()) continue;
    const std::string flag = f;
    v1::StreamGuidance* g = r.mutable_guidance()->mutable_main();
    if (flag == "guidance-scale") g->set_cfg_scale(static_cast<float>(**v));
    if (flag == "stg-scale") g->set_stg_scale(static_cast<float>(**v));
    if (flag == "frame-rate") r.set_frame_rate(**v);
  }
  if (args.Has("seed")) {
    uint64_t seed = 0;
    if (!absl::SimpleAtoi(args.Get("seed"), &seed)) {
      return absl::InvalidArgumentError(
          absl::StrCat("seed: '", args.Get("seed"), "' is not an integer in 0..2^64-1"));
    }
    r.set_seed(seed);
  }
  for (auto [flag, role] : {std::pair{"image", v1::MEDIA_ROLE_EDIT_IMAGE},
                            std::pair{"first-frame", v1::MEDIA_ROLE_FIRST_FRAME}}) {
    if (!args.Has(flag)) continue;
    auto bytes = ReadFileBounded(args.Get(flag), kMaxInputFileBytes);
    if (!bytes.ok()) return bytes.status();
    v1::InputMedia* in = r.add_inputs();
    in->set_role(role);
    in->set_data(std::move(*bytes));
  }
  auto format = OutputFormatOf(args.Get("output-format"), args.Get("output"));
  if (!format.ok()) return format.status();
  r.mutable_output()->set_format(*format);
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

// Writes the result's outputs: one output to `path`; several to `path` with the output's name
// before the extension. Tensor outputs go into a .safetensors file under their names.
absl::Status WriteOutputs(const v1::GenerateResult& result, const std::string& path) {
  if (result.outputs_size() == 0) return absl::InternalError("the result has no output");
  for (const v1::Output& out : result.outputs()) {
    std::string file = path;
    if (result.outputs_size() > 1) {
      const size_t dot = path.rfind('.');
      file = dot == std::string::npos ? absl::StrCat(path, ".", out.info().name())
                                      : absl::StrCat(path.substr(0, dot), ".", out.info().name(),
                                                     path.substr(dot));
    }
    if (out.info().kind() != v1::OUTPUT_KIND_TENSOR) {
      RETURN_IF_ERROR(WriteFile(file, out.data()));
      continue;
    }
    if (out.info().tensor_dtype() == v1::DTYPE_UNSPECIFIED) {
      return absl::InvalidArgumentError("output: a tensor without a dtype");
    }
    OwnedTensor t{ToDType(out.info().tensor_dtype()), std::vector<int64_t>(out.info().tensor_shape().begin(),
                                               out.info().tensor_shape().end()),
                  out.data()};
    RETURN_IF_ERROR(WriteSafetensors(file, {{out.info().name(), t}}));
  }
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
    if (const PipelineModel* m = pipeline->FindModel(accepted->model()); m != nullptr) {
      embedded.ar = std::any_of(m->stages.begin(), m->stages.end(),
                                [](const StageSpec& st) { return st.kind == "ar"; });
    }
    embedded.parallel = *parallel;
    embedded.cuda = device == "cuda";
    auto stages = EmbeddedStages::Create(embedded);
    if (!stages.ok()) return Fail(stages.status());
    o.stages = stages->get();
    auto core = OrchestratorCore::Create(o);
    if (!core.ok()) return Fail(core.status());
    CallContext ctx(absl::Now() + limit);
    SignalCanceller canceller([&] { ctx.Cancel(); });
    OutputAssembler assembler;
    absl::Status s = (*core)->Generate(ctx, *request, [&](const v1::GenerateEvent& e) {
      on_event(e);
      if (e.has_output()) assembler.Add(e.output()).IgnoreError();  // checked by Fill
      if (e.has_result()) result = e.result();
    });
    if (!s.ok()) return Fail(s);
    if (absl::Status filled = assembler.Fill(result); !filled.ok()) return Fail(filled);
  }
  const std::string output = args->Get("output");
  if (absl::Status s = WriteOutputs(result, output); !s.ok()) return Fail(s);
  const auto& m = result.metadata().request();
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
  o.pipeline_file = args->Get("pipeline");
  if (!o.model_dir.empty() && args->Has("model")) {
    return Fail(absl::InvalidArgumentError("--model and --model-dir: give one"));
  }
  if (!o.model_dir.empty() && !o.pipeline_file.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--pipeline and --model-dir: give one (a snapshot's pipeline is generated for it)"));
  }
  // The pipeline the orchestrator will run (a snapshot's from its family and configs). Failing
  // here gives the reason once, rather than in four services' logs.
  auto pipeline = !o.pipeline_file.empty() ? PipelineConfig::Load(o.pipeline_file)
                  : o.model_dir.empty()    ? PipelineConfig::Parse(PipelineConfig::DefaultJson())
                                           : PipelineConfig::ForSnapshot(o.model_dir);
  if (!pipeline.ok()) return Fail(pipeline.status());
  if (!o.pipeline_file.empty()) {
    if (!args->Has("model")) o.model = pipeline->default_model;
    // The orchestrator starts in another working directory's terms: hand it an absolute path.
    std::error_code ec;
    const std::filesystem::path absolute = std::filesystem::absolute(o.pipeline_file, ec);
    if (!ec) o.pipeline_file = absolute.string();
  }
  const PipelineModel* m =
      pipeline->FindModel(o.model_dir.empty() ? o.model : pipeline->default_model);
  if (m == nullptr) {
    return Fail(absl::NotFoundError(absl::StrCat("model: '", o.model, "' is not in the pipeline")));
  }
  // The stages this model's pipeline runs: no AR service for a model without an AR stage.
  o.ar = std::any_of(m->stages.begin(), m->stages.end(),
                     [](const StageSpec& st) { return st.kind == "ar"; });
  o.bin_dir = args->Get("bin-dir");
  o.device = args->Get("device", "cpu");
  if (o.device != "cpu" && o.device != "cuda") {
    return Fail(absl::InvalidArgumentError("device: must be cpu or cuda"));
  }
  auto parallel = ParallelFlags(*args);
  if (!parallel.ok()) return Fail(parallel.status());
  o.parallel = *parallel;
  auto start_timeout = args->GetDouble("start-timeout");
  if (!start_timeout.ok()) return Fail(start_timeout.status());
  if (start_timeout->has_value()) {
    if (!(**start_timeout > 0 && **start_timeout <= 86400)) {
      return Fail(absl::InvalidArgumentError("start-timeout: must lie in (0, 86400] seconds"));
    }
    o.start_timeout = absl::Seconds(**start_timeout);
  }
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
    const auto& d = m.defaults();
    const auto& l = m.limits();
    std::printf("%s%s\n  %s\n  %s; default %dx%d, %d steps, guidance %.2f; sizes %d..%d in "
                "multiples of %d; steps %d..%d; stages %s\n",
                m.name().c_str(), m.name() == models.default_model() ? " (default)" : "",
                m.description().c_str(),
                m.kind() == v1::MODEL_KIND_VIDEO_WITH_AUDIO ? "video with audio" : "image",
                d.width(), d.height(), d.steps(), d.guidance().main().cfg_scale(), l.min_size(),
                l.max_size(), l.size_granularity(), l.min_steps(), l.max_steps(), stages.c_str());
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
