#include "services/embedded/embedded_stages.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/call/input_queue.h"
#include "common/process/subprocess.h"
#include "common/status/status_macros.h"

namespace diffmesh {
namespace {

// A streamed denoise call into the core in this process: the core runs on its own thread
// taking the inputs as they are sent; its events wait here until Finish delivers them.
class EmbeddedDenoiseStream final : public DenoiseStream {
 public:
  EmbeddedDenoiseStream(DenoiseCore* core, CallContext& ctx)
      : worker_([this, core, &ctx] {
          absl::Status s = core->DenoiseStreamed(ctx, inputs_, [this](const v1::DenoiseEvent& e) {
            {
              std::lock_guard<std::mutex> lock(mu_);
              events_.push_back(e);
            }
            cv_.notify_all();
          });
          {
            std::lock_guard<std::mutex> lock(mu_);
            status_ = std::move(s);
            done_ = true;
          }
          cv_.notify_all();
        }) {}

  ~EmbeddedDenoiseStream() override {
    inputs_.Close(absl::CancelledError("denoise stream dropped"));
    worker_.join();
  }

  absl::Status Send(const v1::DenoiseInput& input) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (done_) return absl::FailedPreconditionError("the denoise call has ended");
    }
    if (!inputs_.Push(input)) return absl::FailedPreconditionError("the denoise inputs are closed");
    return absl::OkStatus();
  }

  void CloseInputs(absl::Status status) override { inputs_.Close(std::move(status)); }

  absl::Status Finish(const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return done_ || !events_.empty(); });
      while (!events_.empty()) {
        v1::DenoiseEvent e = std::move(events_.front());
        events_.pop_front();
        lock.unlock();
        on_event(e);
        lock.lock();
      }
      if (done_ && events_.empty()) return status_;
    }
  }

 private:
  InputQueue<v1::DenoiseInput> inputs_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::DenoiseEvent> events_;
  bool done_ = false;
  absl::Status status_;
  std::thread worker_;  // last: starts once the members it uses exist
};

}  // namespace

class EmbeddedStages::Clients final : public ArStageClient,
                                      public EncoderStageClient,
                                      public DenoiseStageClient {
 public:
  explicit Clients(EmbeddedStages* stages) : stages_(stages) {}
  absl::Status Generate(CallContext& ctx, const v1::ArRequest& request,
                        const std::function<void(const v1::ArTokenChunk&)>& on_chunk) override {
    return stages_->ar_->Generate(ctx, request, on_chunk);
  }
  absl::StatusOr<v1::EncodeResponse> Encode(CallContext& ctx,
                                            const v1::EncodeRequest& request) override {
    return stages_->encoder_->Encode(ctx, request);
  }
  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    return stages_->denoise_->Denoise(ctx, request, on_event);
  }
  absl::StatusOr<std::unique_ptr<DenoiseStream>> OpenStream(CallContext& ctx) override {
    return std::make_unique<EmbeddedDenoiseStream>(stages_->denoise_.get(), ctx);
  }

 private:
  EmbeddedStages* stages_;
};

absl::StatusOr<std::unique_ptr<EmbeddedStages>> EmbeddedStages::Create(const Options& o) {
  auto s = std::unique_ptr<EmbeddedStages>(new EmbeddedStages());
  if (o.ar) {
    ArCore::Options ar;
    ar.model = o.model;
    ar.model_dir = o.model_dir;
    ar.max_batch = 1;
    ar.cuda = o.cuda;
    ASSIGN_OR_RETURN(s->ar_, ArCore::Create(ar));
  }
  EncoderCore::Options enc;
  enc.model = o.model;
  enc.model_dir = o.model_dir;
  enc.cuda = o.cuda;
  ASSIGN_OR_RETURN(s->encoder_, EncoderCore::Create(enc));
  DenoiseCore::Options den;
  den.model = o.model;
  den.model_dir = o.model_dir;
  den.cuda = o.cuda;
  den.parallel = o.parallel;
  den.loras = o.denoise_loras;
  den.rendezvous.world_size = o.parallel.world();
  den.rendezvous.rank = 0;
  if (o.parallel.world() > 1) {
    den.rendezvous.master_port = FreeLoopbackPort();
    const std::string binary = FindServiceBinary("denoise", o.bin_dir);
    if (binary.empty()) return absl::NotFoundError("cannot find diffmesh-denoise for the other ranks");
    std::string loras;
    for (const auto& [name, path] : o.denoise_loras) {
      absl::StrAppend(&loras, loras.empty() ? "" : ",", name, "=", path);
    }
    for (int r = 1; r < o.parallel.world(); ++r) {
      ASSIGN_OR_RETURN(pid_t pid, Spawn({binary, "--model=" + o.model, "--model_dir=" + o.model_dir,
                                         absl::StrCat("--rank=", r), "--launch_ranks=false",
                                         std::string("--device=") + (o.cuda ? "cuda" : "cpu"),
                                         absl::StrCat("--cfg_degree=", o.parallel.cfg),
                                         absl::StrCat("--ulysses_degree=", o.parallel.ulysses),
                                         absl::StrCat("--ring_degree=", o.parallel.ring),
                                         absl::StrCat("--tp_degree=", o.parallel.tp),
                                         absl::StrCat("--master_port=", den.rendezvous.master_port),
                                         "--lora=" + loras}));
      s->denoise_ranks_.push_back(pid);
    }
  }
  ASSIGN_OR_RETURN(s->denoise_, DenoiseCore::Create(den));
  s->clients_ = std::make_unique<Clients>(s.get());
  return s;
}

EmbeddedStages::~EmbeddedStages() {
  denoise_.reset();  // rank 0 tells the other ranks to stop
  StopAll(denoise_ranks_);
}

absl::StatusOr<ArStageClient*> EmbeddedStages::Ar(const std::string&) {
  if (ar_ == nullptr) return absl::FailedPreconditionError("no AR stage was started for this model");
  return clients_.get();
}
absl::StatusOr<EncoderStageClient*> EmbeddedStages::Encoder(const std::string&) {
  return clients_.get();
}
absl::StatusOr<DenoiseStageClient*> EmbeddedStages::Denoise(const std::string&) {
  return clients_.get();
}

}  // namespace diffmesh
