// diffmesh C++ client: talks to the orchestrator's GenerationService. No LibTorch.
#ifndef DIFFMESH_SDK_CPP_DIFFMESH_CLIENT_H_
#define DIFFMESH_SDK_CPP_DIFFMESH_CLIENT_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "diffmesh/v1/generation.pb.h"

namespace diffmesh::sdk {

// TLS to the orchestrator. Client::Create reads the PEM files; its errors name the file.
struct TlsOptions {
  // CAs the server's certificate must chain to; empty: the system's roots.
  std::string root_ca_file;
  // Client certificate and its private key, for a server that requires one (mutual TLS);
  // both or neither.
  std::string cert_file;
  std::string key_file;
  // Checked against the server's certificate instead of the address's host (e.g. a
  // certificate for "diffmesh.internal" reached through an IP address).
  std::string target_name_override;
};

struct ClientOptions {
  // Orchestrator address, "host:port".
  std::string address = "127.0.0.1:50051";
  // Deadline of a Generate call unless the call gives its own.
  absl::Duration default_deadline = absl::Minutes(30);
  // Largest message accepted (a PNG result).
  int max_message_bytes = 64 << 20;
  // Unset: plaintext.
  std::optional<TlsOptions> tls;
  // Non-empty: sent as "authorization: Bearer <token>" on every call (the orchestrator's
  // --auth-token-file). Visible ASCII, no spaces.
  std::string bearer_token;
};

// Cancels a running Generate (blocking or async) from any thread. One handle serves one call at
// a time; a handle cancelled before the call starts makes the call fail with CANCELLED at once.
class CancelHandle {
 public:
  CancelHandle();
  ~CancelHandle();
  void Cancel();
  bool cancelled() const;

 private:
  friend class Client;
  struct State;
  std::shared_ptr<State> state_;
};

// Event and completion callbacks of a Generate call.
using EventCallback = std::function<void(const v1::GenerateEvent&)>;
using DoneCallback = std::function<void(absl::StatusOr<v1::GenerateResult>)>;

// Thread-safe: one Client (one channel) serves any number of concurrent calls.
class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);
  ~Client();

  // Runs a generation; `on_event` (optional) sees every progress event, including the final
  // result. Returns the result, or the server's status (code and message). Never retried.
  absl::StatusOr<v1::GenerateResult> Generate(
      const v1::GenerateRequest& request,
      const std::function<void(const v1::GenerateEvent&)>& on_event = nullptr,
      CancelHandle* cancel = nullptr, std::optional<absl::Duration> deadline = std::nullopt);

  // Starts a Generate and returns at once (gRPC's callback API: no thread per call).
  // `on_event` (optional) sees every event in order, then `on_done` runs exactly once with the
  // result or the server's status. Both run on gRPC's threads and must not block (a call that
  // cannot start, e.g. already cancelled, runs `on_done` on the calling thread); `on_done` is the
  // call's last use of its callbacks. Never retried. The Client must outlive the call.
  void GenerateAsync(const v1::GenerateRequest& request, EventCallback on_event,
                     DoneCallback on_done, CancelHandle* cancel = nullptr,
                     std::optional<absl::Duration> deadline = std::nullopt);

  // UNAVAILABLE is retried with backoff until `timeout`.
  absl::StatusOr<v1::ListModelsResponse> ListModels(absl::Duration timeout = absl::Seconds(10));

  // grpc.health.v1 Check of `service` ("" = the whole server); UNAVAILABLE retried until timeout.
  absl::Status WaitUntilServing(absl::Duration timeout, const std::string& service = "");

 private:
  class Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// grpc.health.v1 Check against any diffmesh service over plaintext: OK once it reports SERVING.
// For a TLS service, create a Client with the TLS options and call its WaitUntilServing.
absl::Status WaitUntilServing(const std::string& address, absl::Duration timeout,
                              const std::string& service = "");

}  // namespace diffmesh::sdk

#endif  // DIFFMESH_SDK_CPP_DIFFMESH_CLIENT_H_
