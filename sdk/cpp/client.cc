#include "diffmesh/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "diffmesh/v1/generation.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace diffmesh::sdk {
namespace {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, int max_bytes) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_bytes);
  args.SetMaxSendMessageSize(max_bytes);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// Retries `call` while it answers UNAVAILABLE, with exponential backoff, until `timeout`.
absl::Status RetryUnavailable(absl::Duration timeout, const std::function<absl::Status(absl::Time)>& call) {
  const absl::Time end = absl::Now() + timeout;
  absl::Duration backoff = absl::Milliseconds(20);
  while (true) {
    absl::Status s = call(std::min(end, absl::Now() + absl::Seconds(5)));
    if (s.code() != absl::StatusCode::kUnavailable || absl::Now() + backoff >= end) return s;
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Milliseconds(500));
  }
}

absl::Status HealthCheck(grpc::health::v1::Health::Stub& stub, const std::string& service,
                         absl::Time deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  absl::Status s = FromGrpc(stub.Check(&ctx, req, &resp));
  if (!s.ok()) return s.code() == absl::StatusCode::kDeadlineExceeded
                         ? absl::UnavailableError(s.message())
                         : s;
  if (resp.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(absl::StrCat("not serving (status ", resp.status(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

struct CancelHandle::State {
  std::mutex mu;
  bool cancelled = false;
  grpc::ClientContext* ctx = nullptr;
};

CancelHandle::CancelHandle() : state_(std::make_shared<State>()) {}
CancelHandle::~CancelHandle() = default;

void CancelHandle::Cancel() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->cancelled = true;
  if (state_->ctx != nullptr) state_->ctx->TryCancel();
}

bool CancelHandle::cancelled() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->cancelled;
}

class Client::Impl {
 public:
  // One async Generate: reads events until the stream ends, then reports and deletes itself.
  class GenerateReactor final : public grpc::ClientReadReactor<v1::GenerateEvent> {
   public:
    GenerateReactor(const v1::GenerateRequest& request, EventCallback on_event, DoneCallback on_done,
                    std::shared_ptr<CancelHandle::State> cancel, absl::Time deadline)
        : request_(request),
          on_event_(std::move(on_event)),
          on_done_(std::move(on_done)),
          cancel_(std::move(cancel)) {
      ctx_.set_deadline(absl::ToChronoTime(deadline));
    }

    void Start(v1::GenerationService::Stub& stub) {
      stub.async()->Generate(&ctx_, &request_, this);
      if (cancel_ != nullptr) {
        // Registered before StartCall, cleared in OnDone: Cancel() never sees a freed context.
        std::lock_guard<std::mutex> lock(cancel_->mu);
        cancel_->ctx = &ctx_;
        if (cancel_->cancelled) ctx_.TryCancel();  // Cancel() raced with the start
      }
      StartRead(&event_);
      StartCall();
    }

    void OnReadDone(bool ok) override {
      if (!ok) return;  // the stream ended; OnDone follows with the status
      if (on_event_) on_event_(event_);
      if (event_.has_result()) result_ = std::move(*event_.mutable_result());
      StartRead(&event_);
    }

    void OnDone(const grpc::Status& status) override {
      if (cancel_ != nullptr) {
        std::lock_guard<std::mutex> lock(cancel_->mu);
        if (cancel_->ctx == &ctx_) cancel_->ctx = nullptr;
      }
      absl::StatusOr<v1::GenerateResult> out =
          !status.ok() ? absl::StatusOr<v1::GenerateResult>(FromGrpc(status))
          : result_.has_value()
              ? absl::StatusOr<v1::GenerateResult>(std::move(*result_))
              : absl::InternalError("the server ended the stream without a result");
      DoneCallback done = std::move(on_done_);
      delete this;
      done(std::move(out));
    }

   private:
    grpc::ClientContext ctx_;
    const v1::GenerateRequest request_;
    v1::GenerateEvent event_;
    std::optional<v1::GenerateResult> result_;
    EventCallback on_event_;
    DoneCallback on_done_;
    std::shared_ptr<CancelHandle::State> cancel_;
  };

  explicit Impl(const ClientOptions& o)
      : options_(o),
        channel_(MakeChannel(o.address, o.max_message_bytes)),
        stub_(v1::GenerationService::NewStub(channel_)),
        health_(grpc::health::v1::Health::NewStub(channel_)) {}

  absl::StatusOr<v1::GenerateResult> Generate(const v1::GenerateRequest& request,
                                              const std::function<void(const v1::GenerateEvent&)>& on_event,
                                              CancelHandle* cancel, std::optional<absl::Duration> deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline.value_or(options_.default_deadline)));
    if (cancel != nullptr) {
      std::lock_guard<std::mutex> lock(cancel->state_->mu);
      if (cancel->state_->cancelled) return absl::CancelledError("cancelled before the call");
      cancel->state_->ctx = &ctx;
    }
    auto reader = stub_->Generate(&ctx, request);
    v1::GenerateEvent event;
    std::optional<v1::GenerateResult> result;
    while (reader->Read(&event)) {
      if (on_event) on_event(event);
      if (event.has_result()) result = std::move(*event.mutable_result());
    }
    absl::Status s = FromGrpc(reader->Finish());
    if (cancel != nullptr) {
      std::lock_guard<std::mutex> lock(cancel->state_->mu);
      cancel->state_->ctx = nullptr;
    }
    if (!s.ok()) return s;
    if (!result) return absl::InternalError("the server ended the stream without a result");
    return std::move(*result);
  }

  void GenerateAsync(const v1::GenerateRequest& request, EventCallback on_event, DoneCallback on_done,
                     CancelHandle* cancel, std::optional<absl::Duration> deadline) {
    if (cancel != nullptr && cancel->cancelled()) {
      on_done(absl::CancelledError("cancelled before the call"));
      return;
    }
    auto* reactor = new GenerateReactor(
        request, std::move(on_event), std::move(on_done),
        cancel != nullptr ? cancel->state_ : nullptr,
        absl::Now() + deadline.value_or(options_.default_deadline));
    reactor->Start(*stub_);
  }

  absl::StatusOr<v1::ListModelsResponse> ListModels(absl::Duration timeout) {
    v1::ListModelsResponse out;
    absl::Status s = RetryUnavailable(timeout, [&](absl::Time deadline) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(deadline));
      return FromGrpc(stub_->ListModels(&ctx, v1::ListModelsRequest(), &out));
    });
    if (!s.ok()) return s;
    return out;
  }

  absl::Status WaitUntilServing(absl::Duration timeout, const std::string& service) {
    return RetryUnavailable(timeout, [&](absl::Time deadline) {
      return HealthCheck(*health_, service, deadline);
    });
  }

 private:
  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::GenerationService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("address: must not be empty");
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(options)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::StatusOr<v1::GenerateResult> Client::Generate(
    const v1::GenerateRequest& request, const std::function<void(const v1::GenerateEvent&)>& on_event,
    CancelHandle* cancel, std::optional<absl::Duration> deadline) {
  return impl_->Generate(request, on_event, cancel, deadline);
}

void Client::GenerateAsync(const v1::GenerateRequest& request, EventCallback on_event,
                           DoneCallback on_done, CancelHandle* cancel,
                           std::optional<absl::Duration> deadline) {
  impl_->GenerateAsync(request, std::move(on_event), std::move(on_done), cancel, deadline);
}

absl::StatusOr<v1::ListModelsResponse> Client::ListModels(absl::Duration timeout) {
  return impl_->ListModels(timeout);
}

absl::Status Client::WaitUntilServing(absl::Duration timeout, const std::string& service) {
  return impl_->WaitUntilServing(timeout, service);
}

absl::Status WaitUntilServing(const std::string& address, absl::Duration timeout,
                              const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(MakeChannel(address, 4 << 20));
  return RetryUnavailable(timeout, [&](absl::Time deadline) {
    return HealthCheck(*stub, service, deadline);
  });
}

}  // namespace diffmesh::sdk
