#include "common/rpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/client_interceptor.h>
#include <signal.h>

#include <iostream>

#include "absl/strings/str_cat.h"

namespace diffmesh {
namespace {

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const std::optional<ServerTls>& tls) {
  if (!tls.has_value()) return grpc::InsecureServerCredentials();
  // Without a client CA the server asks for no client certificate at all; with one, a client
  // that has none, or one from another CA, fails the handshake.
  grpc::SslServerCredentialsOptions ssl(
      tls->client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                             : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = tls->client_ca;
  ssl.pem_key_cert_pairs.push_back({tls->private_key, tls->cert_chain});
  return grpc::SslServerCredentials(ssl);
}

// Adds the bearer token to every call's initial metadata.
class BearerInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(const std::string& header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", header_});
    }
    methods->Proceed();
  }

 private:
  const std::string& header_;  // owned by the factory, which the channel keeps
};

class BearerInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerInterceptorFactory(const std::string& token)
      : header_(absl::StrCat("Bearer ", token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new BearerInterceptor(header_);
  }

 private:
  const std::string header_;
};

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const std::shared_ptr<grpc::ChannelCredentials>& creds,
                                           const grpc::ChannelArguments& args,
                                           const std::string& bearer_token) {
  if (bearer_token.empty()) return grpc::CreateCustomChannel(address, creds, args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<BearerInterceptorFactory>(bearer_token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, creds, args,
                                                                 std::move(interceptors));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RunningServer>> RunningServer::Start(
    const std::vector<grpc::Service*>& services, const ServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  auto server = std::unique_ptr<RunningServer>(new RunningServer());
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address, MakeServerCredentials(options.tls), &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  for (grpc::Service* s : services) builder.RegisterService(s);
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    // gRPC only logs why; with TLS the usual cause is a key that does not belong to the
    // certificate.
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", address,
        options.tls ? " with TLS (does the private key belong to the certificate?)" : ""));
  }
  server->health_names_ = options.health_service_names;
  server->health_names_.push_back("");
  for (const auto& name : server->health_names_) {
    server->server_->GetHealthCheckService()->SetServingStatus(
        name, name.empty() || !options.start_not_serving);
  }
  return server;
}

void RunningServer::Shutdown(int grace_ms) {
  // No server_: Start failed (e.g. a TLS key that is not the certificate's) and is discarding us.
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  server_->GetHealthCheckService()->Shutdown();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(grace_ms));
}

RunningServer::~RunningServer() { Shutdown(0); }

void BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForTerminationSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

int ServeUntilSignal(const char* name, const std::vector<grpc::Service*>& services,
                     const ServerOptions& options) {
  auto server = RunningServer::Start(services, options);
  if (!server.ok()) {
    std::cerr << name << ": " << server.status().message() << std::endl;
    return 1;
  }
  std::cout << name << " serving on " << options.host << ":" << (*server)->port()
            << (!options.tls ? "" : options.tls->client_ca.empty() ? " (TLS)" : " (mutual TLS)")
            << std::endl;
  const int sig = WaitForTerminationSignal();
  std::cout << name << ": signal " << sig << ", shutting down" << std::endl;
  (*server)->Shutdown();
  return 0;
}

std::shared_ptr<grpc::Channel> CreateChannel(const std::string& address,
                                             const ChannelOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (options.initial_reconnect_backoff_ms > 0) {
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, options.initial_reconnect_backoff_ms);
  }
  if (options.max_reconnect_backoff_ms > 0) {
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, options.max_reconnect_backoff_ms);
  }
  if (!options.tls.has_value()) {
    return MakeChannel(address, grpc::InsecureChannelCredentials(), args, options.bearer_token);
  }
  if (!options.tls->target_name_override.empty()) {
    args.SetSslTargetNameOverride(options.tls->target_name_override);
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = options.tls->root_certs;
  ssl.pem_private_key = options.tls->private_key;
  ssl.pem_cert_chain = options.tls->cert_chain;
  return MakeChannel(address, grpc::SslCredentials(ssl), args, options.bearer_token);
}

}  // namespace diffmesh
