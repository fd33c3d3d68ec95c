// diffmesh-http: the OpenAI-compatible HTTP front door (images, videos, models) and the browser
// playground, in front of a diffmesh orchestrator. Talks to it through the C++ SDK.
#include <pthread.h>

#include <csignal>
#include <iostream>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/flags/flags.h"
#include "common/rpc/tls_flags.h"
#include "common/rpc/token_file.h"
#include "diffmesh/client.h"
#include "services/http/http_server.h"

ABSL_FLAG(int, port, 8080, "HTTP port (0: any free port, printed at start).");
ABSL_FLAG(std::string, host, "127.0.0.1",
          "Address to listen on (loopback by default; 0.0.0.0 to serve other machines).");
ABSL_FLAG(std::string, orchestrator, "127.0.0.1:50051", "The orchestrator's GenerationService.");
ABSL_FLAG(std::string, orchestrator_tls_ca, "",
          "Call the orchestrator over TLS, verifying its certificate against this PEM CA file.");
ABSL_FLAG(std::string, orchestrator_tls_cert, "",
          "Client certificate (PEM) for an orchestrator that requires one; implies TLS.");
ABSL_FLAG(std::string, orchestrator_tls_key, "", "PEM private key of --orchestrator-tls-cert.");
ABSL_FLAG(std::string, orchestrator_token_file, "",
          "The API token (one line) the orchestrator requires (its --auth-token-file).");
ABSL_FLAG(std::string, auth_token_file, "",
          "Require 'Authorization: Bearer <token>' on /v1/*; the file holds the accepted tokens, "
          "one per line (the orchestrator's format). /health, /metrics and / stay open.");
ABSL_FLAG(int64_t, max_body_bytes, 32 << 20, "Largest request body (413 above).");
ABSL_FLAG(int64_t, max_header_bytes, 16 << 10, "Largest request header section (431 above).");
ABSL_FLAG(int, max_connections, 64,
          "Connections served at once (one worker each); as many more wait accepted, the rest "
          "in the kernel's listen backlog.");
ABSL_FLAG(int, request_timeout_s, 600, "Deadline of a synchronous image generation (504 after).");
ABSL_FLAG(int, video_timeout_s, 3600, "Deadline of a video job.");
ABSL_FLAG(int, io_timeout_s, 30, "Socket read/write timeout.");
ABSL_FLAG(int, keep_alive_s, 5, "Idle keep-alive connections are closed after this long.");
ABSL_FLAG(int, max_video_jobs, 64, "Video jobs held at once (running or finished); 429 above.");
ABSL_FLAG(int, video_retention_s, 3600, "How long a finished video job and its output are kept.");

// The shared server TLS flags (common/rpc/tls_flags.cc); HTTPS takes the same files.
ABSL_DECLARE_FLAG(std::string, tls_cert);
ABSL_DECLARE_FLAG(std::string, tls_key);
ABSL_DECLARE_FLAG(std::string, tls_client_ca);

namespace {
constexpr char kPlayground[] =
#include "services/http/playground.inc"
    ;
}  // namespace

int main(int argc, char** argv) {
  diffmesh::ParseFlags(
      argc, argv,
      "diffmesh-http [--port 8080] [--host 127.0.0.1] [--orchestrator H:P] [--tls-cert F\n"
      "    --tls-key F [--tls-client-ca F]] [--auth-token-file F] (dashes or underscores)\n"
      "Serves OpenAI's images / videos / models HTTP API and a playground page at /,\n"
      "translated to the orchestrator's GenerationService.");
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server
  // SIGINT / SIGTERM are taken by sigwait below: blocked before any thread starts, so that
  // every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto fail = [](const std::string& what) {
    std::cerr << "diffmesh-http: " << what << "\n";
    return 2;
  };
  diffmesh::sdk::ClientOptions client_options;
  client_options.address = absl::GetFlag(FLAGS_orchestrator);
  client_options.default_deadline = absl::Seconds(absl::GetFlag(FLAGS_video_timeout_s));
  const std::string ca = absl::GetFlag(FLAGS_orchestrator_tls_ca);
  const std::string cert = absl::GetFlag(FLAGS_orchestrator_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_orchestrator_tls_key);
  if (!ca.empty() || !cert.empty() || !key.empty()) {
    client_options.tls = diffmesh::sdk::TlsOptions{ca, cert, key, ""};
  }
  if (const std::string f = absl::GetFlag(FLAGS_orchestrator_token_file); !f.empty()) {
    auto token = diffmesh::ReadClientToken(f);
    if (!token.ok())
      return fail(absl::StrCat("--orchestrator-token-file: ", token.status().message()));
    client_options.bearer_token = *token;
  }
  auto client = diffmesh::sdk::Client::Create(client_options);
  if (!client.ok()) return fail(std::string(client.status().message()));

  // The shared TLS flags, checked (files readable, cert and key together) before anything binds.
  auto tls = diffmesh::ServerTlsFromFlags();
  if (!tls.ok()) return fail(std::string(tls.status().message()));

  diffmesh::http::HttpOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  if (tls->has_value()) {
    options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
    options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
    options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  }
  if (const std::string f = absl::GetFlag(FLAGS_auth_token_file); !f.empty()) {
    auto tokens = diffmesh::ReadTokenFile(f);
    if (!tokens.ok()) return fail(absl::StrCat("--auth-token-file: ", tokens.status().message()));
    options.tokens = *std::move(tokens);
  }
  options.max_body_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_body_bytes));
  options.max_header_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_header_bytes));
  options.max_connections = absl::GetFlag(FLAGS_max_connections);
  options.request_timeout = absl::Seconds(absl::GetFlag(FLAGS_request_timeout_s));
  options.video_timeout = absl::Seconds(absl::GetFlag(FLAGS_video_timeout_s));
  options.io_timeout = absl::Seconds(absl::GetFlag(FLAGS_io_timeout_s));
  options.keep_alive_timeout = absl::Seconds(absl::GetFlag(FLAGS_keep_alive_s));
  options.max_video_jobs = static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_max_video_jobs)));
  options.video_retention = absl::Seconds(absl::GetFlag(FLAGS_video_retention_s));
  options.playground_html = kPlayground;

  auto door = diffmesh::http::HttpFrontDoor::Create(options, client->get());
  if (!door.ok()) return fail(std::string(door.status().message()));
  if (absl::Status s = (*door)->Start(); !s.ok()) return fail(std::string(s.message()));
  std::cout << "diffmesh-http listening on " << (options.tls_cert_file.empty() ? "http" : "https")
            << "://" << options.host << ":" << (*door)->port() << " (orchestrator "
            << client_options.address << ")" << std::endl;

  // Until SIGINT / SIGTERM.
  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::cout << "diffmesh-http: stopping" << std::endl;
  (*door)->Stop();
  return 0;
}
