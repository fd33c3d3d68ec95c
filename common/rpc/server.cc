#include "common/rpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <iostream>

#include "absl/strings/str_cat.h"

namespace diffmesh {

absl::StatusOr<std::unique_ptr<RunningServer>> RunningServer::Start(
    const std::vector<grpc::Service*>& services, const ServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  auto server = std::unique_ptr<RunningServer>(new RunningServer());
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  for (grpc::Service* s : services) builder.RegisterService(s);
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
  }
  server->health_names_ = options.health_service_names;
  server->health_names_.push_back("");
  for (const auto& name : server->health_names_) {
    server->server_->GetHealthCheckService()->SetServingStatus(name, true);
  }
  return server;
}

void RunningServer::Shutdown(int grace_ms) {
  if (shut_down_) return;
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
  std::cout << name << " serving on " << options.host << ":" << (*server)->port() << std::endl;
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
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

}  // namespace diffmesh
