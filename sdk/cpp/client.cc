#include "diffmesh/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/output/output_chunks.h"
#include "diffmesh/v1/generation.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace diffmesh::sdk {
namespace {

// A Generate stream's outputs and result: chunks assembled as they arrive, checked, and the
// result returned with every output's bytes.
class ResultAssembly {
 public:
  // An error stops the stream: the output could not be assembled.
  absl::Status Take(v1::GenerateEvent& event) {
    if (event.has_output()) {
      broken_ = assembler_.Add(event.output());
      return broken_;
    }
    if (event.has_result()) result_ = std::move(*event.mutable_result());
    return absl::OkStatus();
  }
  // The outcome, given the call's status.
  absl::StatusOr<v1::GenerateResult> Finish(absl::Status status) {
    if (!broken_.ok()) return broken_;
    if (!status.ok()) return status;
    if (!result_.has_value()) return absl::InternalError("the server ended the stream without a result");
    if (absl::Status s = assembler_.Fill(*result_); !s.ok()) return s;
    return std::move(*result_);
  }

 private:
  OutputAssembler assembler_;
  absl::Status broken_;
  std::optional<v1::GenerateResult> result_;
};


absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// A PEM file's contents; errors name `what` and the path.
absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno != 0 ? errno : EIO;
    const std::string message = absl::StrCat(what, " '", path, "': ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::InvalidArgumentError(message);
  }
  std::stringstream pem;
  pem << in.rdbuf();
  if (pem.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "': not a PEM file"));
  }
  return pem.str();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const std::optional<TlsOptions>& tls) {
  if (!tls.has_value()) return grpc::InsecureChannelCredentials();
  if (tls->cert_file.empty() != tls->key_file.empty()) {
    return absl::InvalidArgumentError("tls: cert_file and key_file go together");
  }
  grpc::SslCredentialsOptions ssl;
  if (!tls->root_ca_file.empty()) {
    auto roots = ReadPem(tls->root_ca_file, "tls.root_ca_file");
    if (!roots.ok()) return roots.status();
    ssl.pem_root_certs = *std::move(roots);
  }
  if (!tls->cert_file.empty()) {
    auto cert = ReadPem(tls->cert_file, "tls.cert_file");
    if (!cert.ok()) return cert.status();
    ssl.pem_cert_chain = *std::move(cert);
    auto key = ReadPem(tls->key_file, "tls.key_file");
    if (!key.ok()) return key.status();
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, int max_bytes,
                                           std::shared_ptr<grpc::ChannelCredentials> credentials,
                                           const std::string& target_name_override = "") {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_bytes);
  args.SetMaxSendMessageSize(max_bytes);
  if (!target_name_override.empty()) args.SetSslTargetNameOverride(target_name_override);
  return grpc::CreateCustomChannel(address, credentials, args);
}

// Per-call metadata rather than call credentials: gRPC sends call credentials over TLS only,
// and a token must also reach a plaintext orchestrator behind a TLS-terminating proxy.
void Authorize(grpc::ClientContext& ctx, const std::string& token) {
  if (!token.empty()) ctx.AddMetadata("authorization", absl::StrCat("Bearer ", token));
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
                         absl::Time deadline, const std::string& token = "") {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  Authorize(ctx, token);
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
                    std::shared_ptr<CancelHandle::State> cancel, absl::Time deadline,
                    const std::string& token)
        : request_(request),
          on_event_(std::move(on_event)),
          on_done_(std::move(on_done)),
          cancel_(std::move(cancel)) {
      ctx_.set_deadline(absl::ToChronoTime(deadline));
      Authorize(ctx_, token);
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
      if (absl::Status s = outputs_.Take(event_); !s.ok()) {
        ctx_.TryCancel();  // OnDone reports the broken output, not the cancel
        return;
      }
      StartRead(&event_);
    }

    void OnDone(const grpc::Status& status) override {
      if (cancel_ != nullptr) {
        std::lock_guard<std::mutex> lock(cancel_->mu);
        if (cancel_->ctx == &ctx_) cancel_->ctx = nullptr;
      }
      absl::StatusOr<v1::GenerateResult> out = outputs_.Finish(FromGrpc(status));
      DoneCallback done = std::move(on_done_);
      delete this;
      done(std::move(out));
    }

   private:
    grpc::ClientContext ctx_;
    const v1::GenerateRequest request_;
    v1::GenerateEvent event_;
    ResultAssembly outputs_;
    EventCallback on_event_;
    DoneCallback on_done_;
    std::shared_ptr<CancelHandle::State> cancel_;
  };

  Impl(const ClientOptions& o, std::shared_ptr<grpc::ChannelCredentials> credentials)
      : options_(o),
        channel_(MakeChannel(o.address, o.max_message_bytes, std::move(credentials),
                             o.tls ? o.tls->target_name_override : "")),
        stub_(v1::GenerationService::NewStub(channel_)),
        health_(grpc::health::v1::Health::NewStub(channel_)) {}

  absl::StatusOr<v1::GenerateResult> Generate(const v1::GenerateRequest& request,
                                              const std::function<void(const v1::GenerateEvent&)>& on_event,
                                              CancelHandle* cancel, std::optional<absl::Duration> deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline.value_or(options_.default_deadline)));
    Authorize(ctx, options_.bearer_token);
    if (cancel != nullptr) {
      std::lock_guard<std::mutex> lock(cancel->state_->mu);
      if (cancel->state_->cancelled) return absl::CancelledError("cancelled before the call");
      cancel->state_->ctx = &ctx;
    }
    auto reader = stub_->Generate(&ctx, request);
    v1::GenerateEvent event;
    ResultAssembly outputs;
    while (reader->Read(&event)) {
      if (on_event) on_event(event);
      if (!outputs.Take(event).ok()) {
        ctx.TryCancel();
        break;
      }
    }
    absl::Status s = FromGrpc(reader->Finish());
    if (cancel != nullptr) {
      std::lock_guard<std::mutex> lock(cancel->state_->mu);
      cancel->state_->ctx = nullptr;
    }
    return outputs.Finish(std::move(s));
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
        absl::Now() + deadline.value_or(options_.default_deadline), options_.bearer_token);
    reactor->Start(*stub_);
  }

  absl::StatusOr<v1::ListModelsResponse> ListModels(absl::Duration timeout) {
    v1::ListModelsResponse out;
    absl::Status s = RetryUnavailable(timeout, [&](absl::Time deadline) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(deadline));
      Authorize(ctx, options_.bearer_token);
      return FromGrpc(stub_->ListModels(&ctx, v1::ListModelsRequest(), &out));
    });
    if (!s.ok()) return s;
    return out;
  }

  absl::Status WaitUntilServing(absl::Duration timeout, const std::string& service) {
    return RetryUnavailable(timeout, [&](absl::Time deadline) {
      return HealthCheck(*health_, service, deadline, options_.bearer_token);
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
  // gRPC would fail every call on an illegal header value; say why once, here.
  for (char c : options.bearer_token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError("bearer_token: must be visible ASCII without spaces");
    }
  }
  auto credentials = Credentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(options, *std::move(credentials))));
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
  auto stub = grpc::health::v1::Health::NewStub(
      MakeChannel(address, 4 << 20, grpc::InsecureChannelCredentials()));
  return RetryUnavailable(timeout, [&](absl::Time deadline) {
    return HealthCheck(*stub, service, deadline);
  });
}

}  // namespace diffmesh::sdk
