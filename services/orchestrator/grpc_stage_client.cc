#include "services/orchestrator/grpc_stage_client.h"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/rpc/server.h"
#include "common/status/grpc_status.h"
#include "diffmesh/v1/stages.grpc.pb.h"

namespace diffmesh {
namespace {

// Propagates the caller's deadline and cancellation into a gRPC client context.
void Bind(CallContext& ctx, grpc::ClientContext& client_ctx) {
  if (ctx.deadline() != absl::InfiniteFuture()) {
    client_ctx.set_deadline(absl::ToChronoTime(ctx.deadline()));
  }
}

// Keeps the code, names the stage and where it was called.
absl::Status StageError(const char* stage, const std::string& address, const grpc::Status& s) {
  absl::Status st = FromGrpcStatus(s);
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat("stage '", stage, "' (", address, "): ", st.message()));
}

// Starts an asynchronous call with `start(done)` and waits on this thread until `done` has
// its outcome: the blocking forms of the stage calls over their callback-API forms.
template <typename T, typename Start>
T Await(Start start) {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<T> outcome;
  start([&](T result) {
    std::lock_guard<std::mutex> lock(mu);
    outcome = std::move(result);
    cv.notify_one();  // under the lock: all of the above dies once the caller wakes
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return outcome.has_value(); });
  return std::move(*outcome);
}

// A server-streaming stage call on gRPC's callback API, read by a blocking caller: each message
// is handed over under mu_ and the next read starts when the caller has taken it, so the
// stage's stream is flow-controlled by the caller as with a sync reader. A sync reader instead
// makes the calling thread poll a completion queue of its own, and each read passes through
// gRPC's pollset hand-offs between threads (futex kicks): in perf, most of the orchestrator's
// futex calls, one of its largest kernel costs.
template <typename Response>
class BlockingReader final : public grpc::ClientReadReactor<Response> {
 public:
  // `start` binds this reactor to the call, e.g. stub->async()->Generate(ctx, &req, reader).
  template <typename StartFn>
  explicit BlockingReader(StartFn start) {
    start(this);
    // The caller's thread starts reads outside the reactions: the hold keeps the call from
    // ending in between. Released once a read finds the stream's end.
    this->AddHold();
    this->StartRead(&incoming_);
    this->StartCall();
  }

  // Calls `on_message` for each message in order, on this thread; returns the call's status
  // once gRPC is done with the call (so this may then be destroyed).
  grpc::Status ReadAll(const std::function<void(const Response&)>& on_message) {
    Response message;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return have_message_ || done_; });
        if (!have_message_) return status_;
        have_message_ = false;
        message.Swap(&incoming_);
      }
      this->StartRead(&incoming_);
      on_message(message);
    }
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      this->RemoveHold();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      have_message_ = true;
    }
    // Outside the lock, so that the woken caller does not block on mu_ at once. Safe: the
    // caller keeps this alive until OnDone.
    cv_.notify_one();
  }

  void OnDone(const grpc::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    done_ = true;
    cv_.notify_one();  // under the lock: the caller may destroy this as soon as it wakes
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  Response incoming_;  // written by gRPC while a read is in flight, else under mu_
  bool have_message_ = false;
  bool done_ = false;
  grpc::Status status_;
};

class GrpcAr final : public ArStageClient {
 public:
  GrpcAr(std::shared_ptr<grpc::Channel> ch, std::string address)
      : stub_(v1::ArTokenService::NewStub(ch)), address_(std::move(address)) {}
  absl::Status Generate(CallContext& ctx, const v1::ArRequest& request,
                        const std::function<void(const v1::ArTokenChunk&)>& on_chunk) override {
    return Await<absl::Status>(
        [&](DoneFn done) { GenerateAsync(ctx, request, on_chunk, std::move(done)); });
  }

  void GenerateAsync(CallContext& ctx, const v1::ArRequest& request, ChunkFn on_chunk,
                     DoneFn done) override {
    new InlineReader(*stub_, ctx, request, address_, std::move(on_chunk), std::move(done));
  }

 private:
  // Hands each chunk to `on_chunk` where it arrives (a gRPC thread) and starts the next read
  // from there: no thread waits for the stream. Deletes itself after `done`.
  class InlineReader final : public grpc::ClientReadReactor<v1::ArTokenChunk> {
   public:
    InlineReader(v1::ArTokenService::Stub& stub, CallContext& ctx, const v1::ArRequest& request,
                 const std::string& address, ChunkFn on_chunk, DoneFn done)
        : address_(address), on_chunk_(std::move(on_chunk)), done_(std::move(done)) {
      Bind(ctx, client_ctx_);
      stub.async()->Generate(&client_ctx_, &request, this);
      // Held until the cancel hook is in place: the call cannot end (and delete this) before.
      AddHold();
      StartRead(&chunk_);
      StartCall();
      hook_.emplace(ctx, [this] { client_ctx_.TryCancel(); });
      RemoveHold();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;
      on_chunk_(chunk_);
      StartRead(&chunk_);
    }
    void OnDone(const grpc::Status& status) override {
      hook_.reset();  // may run inside the hook: CallContext allows that
      DoneFn done = std::move(done_);
      absl::Status s = StageError("ar", address_, status);
      delete this;
      done(std::move(s));
    }

   private:
    const std::string address_;
    grpc::ClientContext client_ctx_;
    std::optional<ScopedCancelHook> hook_;
    ChunkFn on_chunk_;
    DoneFn done_;
    v1::ArTokenChunk chunk_;
  };

  std::unique_ptr<v1::ArTokenService::Stub> stub_;
  std::string address_;
};

class GrpcEncoder final : public EncoderStageClient {
 public:
  GrpcEncoder(std::shared_ptr<grpc::Channel> ch, std::string address)
      : stub_(v1::EncoderService::NewStub(ch)), address_(std::move(address)) {}
  absl::StatusOr<v1::EncodeResponse> Encode(CallContext& ctx,
                                            const v1::EncodeRequest& request) override {
    return Await<absl::StatusOr<v1::EncodeResponse>>(
        [&](EncodeDone done) { EncodeAsync(ctx, request, std::move(done)); });
  }

  // The callback API, as for the streams (see BlockingReader): the sync one polls a completion
  // queue of its own.
  void EncodeAsync(CallContext& ctx, const v1::EncodeRequest& request, EncodeDone done) override {
    // Lives until gRPC reports the outcome.
    struct Call {
      grpc::ClientContext client_ctx;
      v1::EncodeResponse response;
      std::optional<ScopedCancelHook> hook;
      EncodeDone done;
    };
    auto* call = new Call;
    call->done = std::move(done);
    Bind(ctx, call->client_ctx);
    call->hook.emplace(ctx, [call] { call->client_ctx.TryCancel(); });
    stub_->async()->Encode(&call->client_ctx, &request, &call->response,
                           [this, call](grpc::Status status) {
                             call->hook.reset();  // may run inside the hook: it is reentrant
                             absl::Status s = StageError("encoder", address_, status);
                             EncodeDone done = std::move(call->done);
                             v1::EncodeResponse response = std::move(call->response);
                             delete call;
                             if (s.ok()) {
                               done(std::move(response));
                             } else {
                               done(s);
                             }
                           });
  }

 private:
  std::unique_ptr<v1::EncoderService::Stub> stub_;
  std::string address_;
};

// DenoiseService.DenoiseStream on the callback API (see BlockingReader for why not the sync
// one). Send queues an input and returns: writes go out in order, one in flight, the next from
// OnWriteDone, so a producer (the AR stage's reader, the encoder task) never waits for the
// wire. Finish reads the events on the caller's thread, as BlockingReader does.
class GrpcDenoiseStream final : public DenoiseStream,
                                public grpc::ClientBidiReactor<v1::DenoiseInput, v1::DenoiseEvent> {
 public:
  GrpcDenoiseStream(v1::DenoiseService::Stub& stub, CallContext& ctx, std::string address)
      : address_(std::move(address)) {
    Bind(ctx, client_ctx_);
    stub.async()->DenoiseStream(&client_ctx_, this);
    // Operations start outside the reactions on both sides: the holds keep the call open
    // until the inputs are closed (writes) and a read finds the end of the events (reads).
    AddHold();
    AddHold();
    StartRead(&incoming_);
    StartCall();
    hook_.emplace(ctx, [this] { client_ctx_.TryCancel(); });
  }

  ~GrpcDenoiseStream() override {
    hook_.reset();
    CloseInputs(absl::CancelledError("denoise stream dropped"));
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
  }

  absl::Status Send(const v1::DenoiseInput& input) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return absl::FailedPreconditionError("denoise inputs already closed");
      if (broken_) {  // the call has ended; Finish reads why
        return absl::UnavailableError(absl::StrCat("stage 'denoise' (", address_, "): stream ended"));
      }
      pending_.push_back(input);  // deque: the one being written stays where it is
      if (writing_) return absl::OkStatus();
      writing_ = true;
    }
    StartWrite(&pending_.front());
    return absl::OkStatus();
  }

  void CloseInputs(absl::Status status) override {
    bool writes_done = false, release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      closed_ = true;
      if (!status.ok()) {
        close_cancelled_ = true;
        release = !writing_;  // else OnWriteDone releases the hold
      } else if (!writing_) {
        writes_done = !broken_;
        release = broken_;
      }
    }
    // Outside mu_: cancelling may run this reactor's reactions.
    if (!status.ok()) client_ctx_.TryCancel();  // a producer failed: the stage drops the request
    if (writes_done) StartWritesDone();
    if (release) ReleaseWrites();
  }

  // Events that arrived before Finish wait (one read, not restarted); from Finish on they are
  // handed to `on_event` where they arrive, a gRPC thread, and the caller only waits for the end.
  absl::Status Finish(const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    bool buffered = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      on_event_ = &on_event;
      buffered = have_event_;
      have_event_ = false;
    }
    if (buffered) {
      on_event(incoming_);
      StartRead(&incoming_);
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
    return StageError("denoise", address_, status_);
  }

  void OnWriteDone(bool ok) override {
    bool next = false, writes_done = false, release = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.pop_front();
      if (!ok) {
        broken_ = true;
        pending_.clear();
      }
      next = !pending_.empty();
      writing_ = next;
      if (!next && closed_) {
        // Cancelled or broken: nothing more to write; a clean close sends the end.
        writes_done = ok && !close_cancelled_;
        release = !writes_done;
      }
    }
    if (next) StartWrite(&pending_.front());
    if (writes_done) StartWritesDone();
    if (release) ReleaseWrites();
  }

  void OnWritesDoneDone(bool) override { ReleaseWrites(); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      RemoveHold();  // the read side's
      return;
    }
    const std::function<void(const v1::DenoiseEvent&)>* on_event;
    {
      std::lock_guard<std::mutex> lock(mu_);
      on_event = on_event_;
      if (on_event == nullptr) {
        have_event_ = true;  // Finish takes it and starts the next read
        return;
      }
    }
    (*on_event)(incoming_);
    StartRead(&incoming_);
  }

  void OnDone(const grpc::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    done_ = true;
    cv_.notify_all();  // under the lock: this may be destroyed once the waiter wakes
  }

 private:
  void ReleaseWrites() {
    bool first = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      first = !writes_released_;
      writes_released_ = true;
    }
    if (first) RemoveHold();
  }

  const std::string address_;
  grpc::ClientContext client_ctx_;
  std::optional<ScopedCancelHook> hook_;  // after client_ctx_: unregistered before it dies
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::DenoiseInput> pending_;  // front() is being written while writing_
  bool writing_ = false;
  bool closed_ = false;
  bool close_cancelled_ = false;  // CloseInputs with an error cancelled the call
  bool broken_ = false;
  bool writes_released_ = false;
  v1::DenoiseEvent incoming_;  // written by gRPC while a read is in flight
  bool have_event_ = false;    // a read finished before Finish: incoming_ holds its event
  // Finish's handler; valid until OnDone (Finish waits for it).
  const std::function<void(const v1::DenoiseEvent&)>* on_event_ = nullptr;
  bool done_ = false;
  grpc::Status status_;
};

class GrpcDenoise final : public DenoiseStageClient {
 public:
  GrpcDenoise(std::shared_ptr<grpc::Channel> ch, std::string address)
      : stub_(v1::DenoiseService::NewStub(ch)), address_(std::move(address)) {}
  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    grpc::ClientContext client_ctx;
    Bind(ctx, client_ctx);
    ScopedCancelHook hook(ctx, [&] { client_ctx.TryCancel(); });
    BlockingReader<v1::DenoiseEvent> reader([&](grpc::ClientReadReactor<v1::DenoiseEvent>* r) {
      stub_->async()->Denoise(&client_ctx, &request, r);
    });
    return StageError("denoise", address_, reader.ReadAll(on_event));
  }
  absl::StatusOr<std::unique_ptr<DenoiseStream>> OpenStream(CallContext& ctx) override {
    return std::make_unique<GrpcDenoiseStream>(*stub_, ctx, address_);
  }

 private:
  std::unique_ptr<v1::DenoiseService::Stub> stub_;
  std::string address_;
};

// A stage that restarts (a crash, a rollout) is reached again within ~2 s: with gRPC's default
// backoff (growing to 120 s) requests would fail with UNAVAILABLE for minutes after the stage is
// back. Options that set their own backoff keep it.
ChannelOptions WithStageBackoff(ChannelOptions channel) {
  if (channel.initial_reconnect_backoff_ms == 0) {
    channel.initial_reconnect_backoff_ms = kStageInitialReconnectBackoffMs;
  }
  if (channel.max_reconnect_backoff_ms == 0) {
    channel.max_reconnect_backoff_ms = kStageMaxReconnectBackoffMs;
  }
  return channel;
}

}  // namespace

struct GrpcStageClientFactory::Service {
  GrpcAr ar;
  GrpcEncoder encoder;
  GrpcDenoise denoise;
};

GrpcStageClientFactory::GrpcStageClientFactory(std::map<std::string, std::string> services,
                                               ChannelOptions channel)
    : addresses_(std::move(services)), channel_(WithStageBackoff(std::move(channel))) {}
GrpcStageClientFactory::~GrpcStageClientFactory() = default;

absl::StatusOr<GrpcStageClientFactory::Service*> GrpcStageClientFactory::Get(
    const std::string& service) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = services_.find(service);
  if (it != services_.end()) return it->second.get();
  auto addr = addresses_.find(service);
  if (addr == addresses_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("no address for service '", service, "'"));
  }
  auto ch = CreateChannel(addr->second, channel_);
  auto s = std::unique_ptr<Service>(new Service{GrpcAr(ch, addr->second),
                                                GrpcEncoder(ch, addr->second),
                                                GrpcDenoise(ch, addr->second)});
  Service* raw = s.get();
  services_.emplace(service, std::move(s));
  return raw;
}

absl::StatusOr<ArStageClient*> GrpcStageClientFactory::Ar(const std::string& service) {
  auto s = Get(service);
  if (!s.ok()) return s.status();
  return &(*s)->ar;
}
absl::StatusOr<EncoderStageClient*> GrpcStageClientFactory::Encoder(const std::string& service) {
  auto s = Get(service);
  if (!s.ok()) return s.status();
  return &(*s)->encoder;
}
absl::StatusOr<DenoiseStageClient*> GrpcStageClientFactory::Denoise(const std::string& service) {
  auto s = Get(service);
  if (!s.ok()) return s.status();
  return &(*s)->denoise;
}

}  // namespace diffmesh
