// Server bootstrap shared by every diffmesh service: health (grpc.health.v1), reflection,
// explicit message-size limits, TLS / mutual TLS, and shutdown on SIGINT/SIGTERM.
#ifndef DIFFMESH_COMMON_RPC_SERVER_H_
#define DIFFMESH_COMMON_RPC_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/rpc/tls.h"

namespace diffmesh {

// Fits the largest tensors of the configured models (a 2048² RGB8 image is 12 MiB, GLM-Image
// latents at 2048² are 4 MiB) with room for PNG overhead.
inline constexpr int kMaxMessageBytes = 64 << 20;

struct ServerOptions {
  // Address to listen on; port 0 picks a free port (see RunningServer::port).
  std::string host = "0.0.0.0";
  // TCP port.
  int port = 0;
  // Send/receive message limit in bytes.
  int max_message_bytes = kMaxMessageBytes;
  // Names reported SERVING by the health service besides "" (e.g. "diffmesh.v1.DenoiseService").
  std::vector<std::string> health_service_names;
  // The names of health_service_names start NOT_SERVING ("" still SERVING): the caller turns
  // them SERVING once it can serve (the orchestrator: once every stage does).
  bool start_not_serving = false;
  // Unset: plaintext. Set: TLS, and mutual TLS when `tls->client_ca` is non-empty (health and
  // reflection included: the handshake comes before any service).
  std::optional<ServerTls> tls;
};

class RunningServer {
 public:
  // Builds and starts a server for `services` (not owned; they must outlive the server).
  static absl::StatusOr<std::unique_ptr<RunningServer>> Start(
      const std::vector<grpc::Service*>& services, const ServerOptions& options);

  int port() const { return port_; }
  grpc::Server* server() { return server_.get(); }
  // Marks every health name NOT_SERVING, then shuts down, waiting at most `grace_ms` for calls.
  void Shutdown(int grace_ms = 2000);
  ~RunningServer();

 private:
  RunningServer() = default;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::string> health_names_;
  int port_ = 0;
  bool shut_down_ = false;
};

// Blocks the calling thread until SIGINT or SIGTERM arrives. Call from main() before any
// thread is started (it blocks both signals in the calling thread so threads inherit it).
void BlockTerminationSignals();
int WaitForTerminationSignal();

// Starts `services`, prints "<name> serving on host:port", blocks until SIGINT/SIGTERM, then
// shuts down gracefully. Returns the process exit code. Call BlockTerminationSignals() first.
int ServeUntilSignal(const char* name, const std::vector<grpc::Service*>& services,
                     const ServerOptions& options);

struct ChannelOptions {
  // Send/receive message limit in bytes.
  int max_message_bytes = kMaxMessageBytes;
  // Unset: plaintext.
  std::optional<ChannelTls> tls;
  // Reconnect backoff after a failed connection attempt (GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS /
  // GRPC_ARG_MAX_RECONNECT_BACKOFF_MS); 0 keeps gRPC's defaults (1 s growing to 120 s, so a
  // peer that was down for a minute is retried only minutes later).
  int initial_reconnect_backoff_ms = 0;
  int max_reconnect_backoff_ms = 0;
  // Non-empty: every call on the channel carries "authorization: Bearer <bearer_token>" (the
  // orchestrator's stage token). Sent by a client interceptor rather than call credentials,
  // which gRPC sends over TLS only: the mesh may run plaintext on a private network.
  std::string bearer_token;
};

// Channel to `address` ("host:port"), plaintext or TLS as `options.tls` says.
std::shared_ptr<grpc::Channel> CreateChannel(const std::string& address,
                                             const ChannelOptions& options = {});

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_SERVER_H_
