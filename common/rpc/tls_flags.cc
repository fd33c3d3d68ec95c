#include "common/rpc/tls_flags.h"

#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, tls_cert, "",
          "Serve TLS with this PEM certificate (chain); needs --tls-key. Empty: plaintext.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert (unencrypted).");
ABSL_FLAG(std::string, tls_client_ca, "",
          "Mutual TLS: require every client (health checks included) to present a certificate "
          "signed by a CA in this PEM file.");

namespace diffmesh {

absl::StatusOr<std::optional<ServerTls>> ServerTlsFromFlags() {
  ServerTlsFiles files;
  files.cert = absl::GetFlag(FLAGS_tls_cert);
  files.key = absl::GetFlag(FLAGS_tls_key);
  files.client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (files.cert.empty() && !files.client_ca.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  return LoadServerTls(files);
}

}  // namespace diffmesh
