// diffmesh-stub-stages: the three stage APIs (ArTokenService, EncoderService, DenoiseService)
// with negligible work, for measuring the orchestrator (the control plane) on its own. Serves
// what the orchestrator needs to complete a request: one final AR chunk with a 1×1 prior-token
// grid, 1×1×1 prompt embeddings, `steps` denoise step events and a real PNG of the requested
// size (a grey image, encoded once per size and cached), for whole and streamed (DenoiseStream)
// denoise calls alike. No model, no LibTorch.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/flags/flags.h"
#include "common/image/png.h"
#include "common/output/output_chunks.h"
#include "common/rpc/server.h"
#include "common/rpc/stage_token.h"
#include "diffmesh/v1/stages.grpc.pb.h"

ABSL_FLAG(int, port, 50052, "Port of the three stage services.");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address to listen on.");
ABSL_FLAG(std::string, model, "trivial",
          "The model the stages describe themselves as serving (Describe); the orchestrator "
          "refuses a pipeline whose models they do not serve.");
ABSL_FLAG(int, denoise_step_ms, 0,
          "Sleep this long before each denoise event after the first (tests of cancellation, "
          "deadlines and progress need a generation that takes a while); 0: none.");

namespace diffmesh::loadtest {
namespace {

// The write side of a stub call (Base: a server-streaming or bidirectional reactor): writes
// `messages` in order, one write in flight, then finishes with `status`. As the stage services
// send a queue of events (common/rpc/streaming_call.h): writes after the first carry gRPC's
// buffer hint while more follow, and the last goes out with an OK status in one batch.
template <typename Base, typename Message>
class MessageWriter : public Base {
 public:
  void OnWriteDone(bool ok) override {
    if (!ok) {
      this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 protected:
  void WriteMessages(std::vector<Message> messages, grpc::Status status = grpc::Status::OK,
                     absl::Duration delay = absl::ZeroDuration()) {
    delay_ = delay;
    messages_ = std::move(messages);
    status_ = std::move(status);
    Next();
  }

 private:
  void Next() {
    if (next_ == messages_.size()) {  // all written (a status that is not OK follows them)
      this->Finish(status_);
      return;
    }
    // Blocks a gRPC callback thread: for test stubs only (the flag is off by default).
    if (next_ > 0 && delay_ > absl::ZeroDuration()) absl::SleepFor(delay_);
    const Message& message = messages_[next_++];
    if (next_ == messages_.size() && status_.ok()) {
      this->StartWriteAndFinish(&message, grpc::WriteOptions(), status_);
      return;
    }
    grpc::WriteOptions options;
    if (next_ > 1 && delay_ == absl::ZeroDuration()) options.set_buffer_hint();
    this->StartWrite(&message, options);
  }

  std::vector<Message> messages_;
  grpc::Status status_;
  absl::Duration delay_;
  size_t next_ = 0;
};

// A server-streaming answer: `messages`, then `status`.
template <typename Message>
class WriteAll final : public MessageWriter<grpc::ServerWriteReactor<Message>, Message> {
 public:
  explicit WriteAll(std::vector<Message> messages, grpc::Status status = grpc::Status::OK,
                    absl::Duration delay = absl::ZeroDuration()) {
    this->WriteMessages(std::move(messages), std::move(status), delay);
  }
};

v1::Tensor ZeroTensor(v1::DType dtype, std::vector<int64_t> shape, size_t element_bytes) {
  v1::Tensor t;
  t.set_dtype(dtype);
  size_t n = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    n *= static_cast<size_t>(d);
  }
  t.set_data(std::string(n * element_bytes, '\0'));
  return t;
}

// --stage-token-file: checked first on every call, as the real stages do.
const TokenAuthenticator* stage_auth = nullptr;

grpc::Status CheckToken(const grpc::CallbackServerContext& ctx) {
  absl::Status s = CheckCallToken(stage_auth, ctx);
  return s.ok() ? grpc::Status::OK
                : grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(s.message()));
}

// Describe: `kind` for --model, with the stub's tensor facts: 1-wide embeddings (the encoder
// makes FLOAT32 [1, 1, 1]), any size granularity and step count.
grpc::ServerUnaryReactor* DescribeAs(grpc::CallbackServerContext* ctx, const char* kind,
                                     v1::StageDescription* out) {
  auto* reactor = ctx->DefaultReactor();
  if (grpc::Status auth = CheckToken(*ctx); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  out->add_kinds(kind);
  v1::ServedModel* m = out->add_models();
  m->set_name(absl::GetFlag(FLAGS_model));
  m->set_family("stub");
  if (std::string(kind) != "ar") {
    (*m->mutable_embedding_widths())["prompt_embeds"] = 1;
    (*m->mutable_embedding_widths())["negative_prompt_embeds"] = 1;
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

class StubAr final : public v1::ArTokenService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx, const v1::DescribeRequest*,
                                     v1::StageDescription* out) override {
    return DescribeAs(ctx, "ar", out);
  }

  grpc::ServerWriteReactor<v1::ArTokenChunk>* Generate(grpc::CallbackServerContext* ctx,
                                                       const v1::ArRequest*) override {
    if (grpc::Status auth = CheckToken(*ctx); !auth.ok()) {
      return RejectedWrite<v1::ArTokenChunk>(auth);
    }
    v1::ArTokenChunk chunk;
    chunk.add_tokens(0);
    chunk.set_offset(0);
    chunk.set_total(1);
    chunk.set_done(true);
    *chunk.mutable_prior_tokens() = ZeroTensor(v1::INT64, {1, 1}, 8);
    return new WriteAll<v1::ArTokenChunk>({std::move(chunk)});
  }
};

class StubEncoder final : public v1::EncoderService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx, const v1::DescribeRequest*,
                                     v1::StageDescription* out) override {
    return DescribeAs(ctx, "encoder", out);
  }

  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* ctx, const v1::EncodeRequest*,
                                   v1::EncodeResponse* response) override {
    if (grpc::Status auth = CheckToken(*ctx); !auth.ok()) {
      auto* reactor = ctx->DefaultReactor();
      reactor->Finish(auth);
      return reactor;
    }
    *response->mutable_prompt_embeds() = ZeroTensor(v1::FLOAT32, {1, 1, 1}, 4);
    *response->mutable_negative_prompt_embeds() = ZeroTensor(v1::FLOAT32, {1, 1, 1}, 4);
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

class StubDenoise final : public v1::DenoiseService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx, const v1::DescribeRequest*,
                                     v1::StageDescription* out) override {
    return DescribeAs(ctx, "denoise", out);
  }

  grpc::ServerWriteReactor<v1::DenoiseEvent>* Denoise(grpc::CallbackServerContext* ctx,
                                                      const v1::DenoiseRequest* request) override {
    if (grpc::Status auth = CheckToken(*ctx); !auth.ok()) {
      return RejectedWrite<v1::DenoiseEvent>(auth);
    }
    auto events = Events(*request);
    if (!events.ok()) {
      return new WriteAll<v1::DenoiseEvent>(
          {}, grpc::Status(grpc::StatusCode::INTERNAL, std::string(events.status().message())));
    }
    return new WriteAll<v1::DenoiseEvent>(std::move(*events), grpc::Status::OK, StepDelay());
  }

  static absl::Duration StepDelay() {
    return absl::Milliseconds(absl::GetFlag(FLAGS_denoise_step_ms));
  }

  // The streamed form: reads the inputs to their end (the request's size and steps are all it
  // needs), then answers as Denoise does.
  class Stream final
      : public MessageWriter<grpc::ServerBidiReactor<v1::DenoiseInput, v1::DenoiseEvent>,
                             v1::DenoiseEvent> {
   public:
    explicit Stream(StubDenoise* owner) : owner_(owner) { StartRead(&in_); }
    void OnReadDone(bool ok) override {
      if (ok) {
        if (in_.has_request()) request_ = in_.request();
        StartRead(&in_);
        return;
      }
      auto events = owner_->Events(request_);
      if (!events.ok()) {
        WriteMessages({}, grpc::Status(grpc::StatusCode::INTERNAL,
                                       std::string(events.status().message())));
        return;
      }
      WriteMessages(std::move(*events), grpc::Status::OK, StepDelay());
    }

   private:
    StubDenoise* owner_;
    v1::DenoiseInput in_;
    v1::DenoiseRequest request_;
  };
  grpc::ServerBidiReactor<v1::DenoiseInput, v1::DenoiseEvent>* DenoiseStream(
      grpc::CallbackServerContext* ctx) override {
    if (grpc::Status auth = CheckToken(*ctx); !auth.ok()) {
      return RejectedBidi<v1::DenoiseInput, v1::DenoiseEvent>(auth);
    }
    return new Stream(this);
  }

 private:
  absl::StatusOr<std::vector<v1::DenoiseEvent>> Events(const v1::DenoiseRequest& r) {
    const v1::DenoiseRequest* request = &r;
    const absl::Time start = absl::Now();
    const int steps = std::max(1, request->steps());
    std::vector<v1::DenoiseEvent> events;
    for (int i = 1; i <= steps; ++i) {
      v1::DenoiseEvent e;
      e.mutable_progress()->set_unit("step");
      e.mutable_progress()->set_done(i);
      e.mutable_progress()->set_total(steps);
      events.push_back(std::move(e));
    }
    const int height = std::max(1, request->height()), width = std::max(1, request->width());
    auto png = Png(height, width);
    if (!png.ok()) return png.status();
    v1::OutputInfo info;
    info.set_name("image");
    info.set_kind(v1::OUTPUT_KIND_IMAGE);
    info.set_mime_type("image/png");
    info.set_width(width);
    info.set_height(height);
    ForEachOutputChunk(info, *png, [&](v1::OutputChunk&& chunk) {
      v1::DenoiseEvent e;
      *e.mutable_output() = std::move(chunk);
      events.push_back(std::move(e));
    });
    v1::DenoiseEvent result;
    result.mutable_result()->set_denoise_seconds(absl::ToDoubleSeconds(absl::Now() - start));
    result.mutable_result()->set_vae_decode_seconds(0);
    events.push_back(std::move(result));
    return events;
  }

  absl::StatusOr<std::string> Png(int height, int width) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find({height, width});
    if (it != cache_.end()) return it->second;
    std::vector<uint8_t> grey(static_cast<size_t>(height) * width * 3, 128);
    auto png = EncodePng(grey.data(), width, height);
    if (!png.ok()) return png.status();
    cache_.emplace(std::make_pair(height, width), *png);
    return *png;
  }

  std::mutex mu_;
  std::map<std::pair<int, int>, std::string> cache_;
};

}  // namespace
}  // namespace diffmesh::loadtest

int main(int argc, char** argv) {
  diffmesh::ParseFlags(argc, argv,
      "diffmesh-stub-stages --port P\n"
      "Serves ArTokenService, EncoderService and DenoiseService with negligible work (no model),\n"
      "so that an orchestrator pointed at it measures the control plane alone.");
  diffmesh::BlockTerminationSignals();
  auto auth = diffmesh::StageAuthenticatorFromFlags();
  if (!auth.ok()) {
    std::cerr << "diffmesh-stub-stages: " << auth.status().message() << "\n";
    return 2;
  }
  diffmesh::loadtest::stage_auth = auth->get();
  diffmesh::loadtest::StubAr ar;
  diffmesh::loadtest::StubEncoder encoder;
  diffmesh::loadtest::StubDenoise denoise;
  diffmesh::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.health_service_names = {"diffmesh.v1.ArTokenService", "diffmesh.v1.EncoderService",
                                  "diffmesh.v1.DenoiseService"};
  return diffmesh::ServeUntilSignal("diffmesh-stub-stages", {&ar, &encoder, &denoise}, options);
}
