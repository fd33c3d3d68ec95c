#include "services/cli/security_flags.h"

#include "absl/strings/str_cat.h"
#include "common/rpc/tls.h"
#include "common/rpc/token_file.h"

namespace diffmesh::cli {
namespace {

// INVALID_ARGUMENT unless `a` and `b` are both given or both absent.
absl::Status Pair(const Args& args, const char* a, const char* b) {
  if (args.Has(a) != args.Has(b)) {
    return absl::InvalidArgumentError(absl::StrCat("--", a, " and --", b, " go together"));
  }
  return absl::OkStatus();
}

}  // namespace

const std::vector<FlagSpec>& ClientSecurityFlags() {
  static const auto* flags = new std::vector<FlagSpec>{
      {"tls-ca", "FILE", "with --server: TLS, verifying the server against the CAs in FILE (PEM)"},
      {"tls-cert", "FILE", "with --server: client certificate (PEM) for a server that requires "
                           "one (mutual TLS); implies TLS"},
      {"tls-key", "FILE", "private key of --tls-cert"},
      {"token-file", "FILE", "with --server: send the API token in FILE (one line) as "
                             "'authorization: Bearer'"},
  };
  return *flags;
}

const std::vector<FlagSpec>& MeshSecurityFlags() {
  static const auto* flags = new std::vector<FlagSpec>{
      {"tls-cert", "FILE", "every service serves TLS with this certificate (for 127.0.0.1); "
                           "needs --tls-key and --tls-ca"},
      {"tls-key", "FILE", "private key of --tls-cert"},
      {"tls-ca", "FILE", "the CA of --tls-cert: the orchestrator and `up` verify the services "
                         "with it"},
      {"tls-client-ca", "FILE", "mutual TLS: every service requires a client certificate from "
                                "this CA; needs --stage-tls-cert/--stage-tls-key"},
      {"stage-tls-cert", "FILE", "client certificate the orchestrator (and `up`'s health checks) "
                                 "present to the services under --tls-client-ca"},
      {"stage-tls-key", "FILE", "private key of --stage-tls-cert"},
      {"auth-token-file", "FILE", "the orchestrator requires one of the API tokens in FILE (one "
                                  "per line, # comments) on every call; health stays open"},
      {"stage-token-file", "FILE", "the stage token (the stages serve only callers presenting "
                                   "it: the orchestrator); default: a throw-away random one"},
  };
  return *flags;
}

std::vector<FlagSpec> WithFlags(std::vector<FlagSpec> specs, const std::vector<FlagSpec>& more) {
  specs.insert(specs.end(), more.begin(), more.end());
  return specs;
}

absl::StatusOr<std::optional<sdk::ClientOptions>> ServerClientOptions(const Args& args) {
  if (!args.Has("server")) {
    for (const auto& f : ClientSecurityFlags()) {
      if (args.Has(f.name)) {
        return absl::InvalidArgumentError(absl::StrCat("--", f.name, " needs --server"));
      }
    }
    return std::optional<sdk::ClientOptions>();
  }
  if (absl::Status s = Pair(args, "tls-cert", "tls-key"); !s.ok()) return s;
  sdk::ClientOptions options;
  options.address = args.Get("server");
  if (args.Has("tls-ca") || args.Has("tls-cert")) {
    options.tls = sdk::TlsOptions{};
    options.tls->root_ca_file = args.Get("tls-ca");
    options.tls->cert_file = args.Get("tls-cert");
    options.tls->key_file = args.Get("tls-key");
  }
  if (args.Has("token-file")) {
    auto token = ReadClientToken(args.Get("token-file"));
    if (!token.ok()) return token.status();
    options.bearer_token = *std::move(token);
  }
  return std::optional<sdk::ClientOptions>(std::move(options));
}

absl::Status ApplyMeshSecurity(const Args& args, MeshOptions* mesh) {
  if (absl::Status s = Pair(args, "tls-cert", "tls-key"); !s.ok()) return s;
  if (absl::Status s = Pair(args, "stage-tls-cert", "stage-tls-key"); !s.ok()) return s;
  const bool tls = args.Has("tls-cert");
  for (const char* needs_tls : {"tls-ca", "tls-client-ca", "stage-tls-cert"}) {
    if (args.Has(needs_tls) && !tls) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", needs_tls, " needs --tls-cert and --tls-key (TLS on the services)"));
    }
  }
  if (tls && !args.Has("tls-ca")) {
    return absl::InvalidArgumentError(
        "--tls-cert needs --tls-ca: the CA that signed it, with which the orchestrator and `up` "
        "verify the services");
  }
  if (args.Has("tls-client-ca") && !args.Has("stage-tls-cert")) {
    return absl::InvalidArgumentError(
        "--tls-client-ca needs --stage-tls-cert and --stage-tls-key: the orchestrator's own "
        "client certificate for the stages");
  }
  MeshSecurity& s = mesh->security;
  s.tls_cert = args.Get("tls-cert");
  s.tls_key = args.Get("tls-key");
  s.tls_client_ca = args.Get("tls-client-ca");
  s.tls_ca = args.Get("tls-ca");
  s.stage_tls_cert = args.Get("stage-tls-cert");
  s.stage_tls_key = args.Get("stage-tls-key");
  s.auth_token_file = args.Get("auth-token-file");
  s.stage_token_file = args.Get("stage-token-file");
  // Read every file now: one clear error here rather than four services failing to start.
  if (auto t = LoadServerTls({s.tls_cert, s.tls_key, s.tls_client_ca}); !t.ok()) return t.status();
  if (auto t = LoadChannelTls({s.tls_ca, s.stage_tls_cert, s.stage_tls_key}); !t.ok()) {
    return t.status();
  }
  if (!s.auth_token_file.empty()) {
    if (auto t = ReadTokenFile(s.auth_token_file); !t.ok()) return t.status();
  }
  if (!s.stage_token_file.empty()) {
    if (auto t = ReadTokenFile(s.stage_token_file); !t.ok()) return t.status();
  }
  return absl::OkStatus();
}

}  // namespace diffmesh::cli
