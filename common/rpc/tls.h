// TLS material for diffmesh servers and channels, read from PEM files with errors that name
// the file, so that a wrong path or a swapped cert/key is reported before anything listens.
#ifndef DIFFMESH_COMMON_RPC_TLS_H_
#define DIFFMESH_COMMON_RPC_TLS_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace diffmesh {

// A server's TLS identity (PEM contents, not paths).
struct ServerTls {
  std::string cert_chain;
  std::string private_key;
  // Non-empty: mutual TLS. Every client must present a certificate that chains to these CAs;
  // the handshake fails otherwise, before any call reaches a service.
  std::string client_ca;
};

// TLS for a channel (PEM contents).
struct ChannelTls {
  // CAs the server's certificate must chain to; empty: gRPC's default roots.
  std::string root_certs;
  // The client's certificate for mutual TLS; both empty or both set.
  std::string cert_chain;
  std::string private_key;
  // Checked against the server's certificate instead of the address's host (e.g. when a
  // certificate for "orchestrator.internal" is reached through an IP address).
  std::string target_name_override;
};

// PEM file paths as given on a command line.
struct ServerTlsFiles {
  std::string cert;       // certificate chain; empty: plaintext
  std::string key;        // its private key
  std::string client_ca;  // optional: require client certificates signed by these CAs
};
struct ChannelTlsFiles {
  std::string ca;    // roots to verify the server; empty: the system's
  std::string cert;  // optional client certificate (mTLS)
  std::string key;   // its private key
  // Whether any file is named (TLS is used when one is).
  bool any() const { return !ca.empty() || !cert.empty() || !key.empty(); }
};

// Reads a PEM file that must hold a block whose type ends in `kind` ("CERTIFICATE",
// "PRIVATE KEY"). Errors name `what` and the path: "TLS certificate '/x.pem': no such file".
absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view what,
                                        absl::string_view kind);

// nullopt when `files.cert` and `files.key` are empty (plaintext). INVALID_ARGUMENT when only one
// of them is given or a client CA comes without them; file errors as ReadPemFile's.
absl::StatusOr<std::optional<ServerTls>> LoadServerTls(const ServerTlsFiles& files);

// nullopt when no file is named (plaintext); cert and key must come together.
absl::StatusOr<std::optional<ChannelTls>> LoadChannelTls(const ChannelTlsFiles& files);

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_TLS_H_
