// diffmesh's HTTP front door: OpenAI's images / videos / models API and a browser playground,
// translated to GenerationService calls through the C++ SDK's GenerateAsync (no orchestrator
// logic of its own). gRPC- and LibTorch-free: the HTTP library (cpp-httplib) stays in the .cc.
//
// Routes: POST /v1/images/generations, POST /v1/images/edits, POST /v1/videos,
// GET|DELETE /v1/videos/{id}, GET /v1/videos/{id}/content, GET /v1/models, GET /health,
// GET /metrics, GET / (the playground page).
#ifndef DIFFMESH_SERVICES_HTTP_HTTP_SERVER_H_
#define DIFFMESH_SERVICES_HTTP_HTTP_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "diffmesh/client.h"

namespace diffmesh::http {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (see HttpFrontDoor::port())
  // HTTPS: certificate chain and key (PEM files); with client_ca, clients must present a
  // certificate signed by it. All empty: plain HTTP.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // Accepted bearer tokens for /v1/* ("Authorization: Bearer <token>"); empty: no check.
  // /health, /metrics and the playground page stay open.
  std::vector<std::string> tokens;
  size_t max_body_bytes = 32 << 20;    // larger bodies: 413
  size_t max_header_bytes = 16 << 10;  // larger header sections: 431
  int max_connections = 64;  // connections served at once; as many more wait accepted, then backlog
  absl::Duration request_timeout = absl::Minutes(10);  // deadline of a synchronous generation
  absl::Duration video_timeout = absl::Minutes(60);    // deadline of a video job
  absl::Duration io_timeout = absl::Seconds(30);       // socket read / write
  absl::Duration keep_alive_timeout = absl::Seconds(5);
  size_t max_video_jobs = 64;
  absl::Duration video_retention = absl::Hours(1);
  std::string playground_html;  // served at / and /playground
};

class HttpFrontDoor {
 public:
  // `client` must outlive the front door.
  static absl::StatusOr<std::unique_ptr<HttpFrontDoor>> Create(HttpOptions options,
                                                               sdk::Client* client);
  ~HttpFrontDoor();  // Stop()

  // Binds host:port (errors name them) and serves on a background thread.
  absl::Status Start();
  int port() const;
  // Stops accepting, cancels running video jobs and waits for every generation to end.
  void Stop();

 private:
  class Impl;
  explicit HttpFrontDoor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffmesh::http

#endif  // DIFFMESH_SERVICES_HTTP_HTTP_SERVER_H_
