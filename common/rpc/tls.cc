#include "common/rpc/tls.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace diffmesh {
namespace {

// PEM bundles are a few KiB; anything far larger is the wrong file (or a device).
constexpr off_t kMaxPemBytes = 1 << 20;

absl::Status FileError(int err, absl::string_view what, const std::string& path) {
  const std::string message = absl::StrCat(what, " '", path, "': ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES) return absl::PermissionDeniedError(message);
  return absl::InvalidArgumentError(message);
}

// Whether `pem` has a "-----BEGIN <...kind>-----" line.
bool HasPemBlock(const std::string& pem, absl::string_view kind) {
  for (size_t at = pem.find("-----BEGIN "); at != std::string::npos;
       at = pem.find("-----BEGIN ", at + 1)) {
    const size_t end = pem.find("-----", at + 11);
    if (end == std::string::npos) return false;
    if (absl::EndsWith(absl::string_view(pem).substr(at + 11, end - at - 11), kind)) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view what,
                                        absl::string_view kind) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return FileError(errno, what, path);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return FileError(err, what, path);
  }
  if (!S_ISREG(st.st_mode) || st.st_size > kMaxPemBytes) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "': not a PEM file (a directory, device or over 1 MiB)"));
  }
  std::string pem(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < pem.size()) {
    const ssize_t n = read(fd, pem.data() + done, pem.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      close(fd);
      return FileError(err, what, path);
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  if (!HasPemBlock(pem, kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "': holds no PEM '", kind, "' block"));
  }
  // gRPC cannot use a passphrase-protected key; say so instead of failing in the handshake.
  if (kind == "PRIVATE KEY" && HasPemBlock(pem, "ENCRYPTED PRIVATE KEY")) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "': the key is encrypted; give an unencrypted PEM key"));
  }
  return pem;
}

absl::StatusOr<std::optional<ServerTls>> LoadServerTls(const ServerTlsFiles& files) {
  if (files.cert.empty() && files.key.empty()) {
    if (!files.client_ca.empty()) {
      return absl::InvalidArgumentError(
          "a TLS client CA needs the server's own TLS certificate and key");
    }
    return std::optional<ServerTls>();
  }
  if (files.cert.empty() || files.key.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and its private key");
  }
  ServerTls tls;
  auto cert = ReadPemFile(files.cert, "TLS certificate", "CERTIFICATE");
  if (!cert.ok()) return cert.status();
  tls.cert_chain = *std::move(cert);
  auto key = ReadPemFile(files.key, "TLS private key", "PRIVATE KEY");
  if (!key.ok()) return key.status();
  tls.private_key = *std::move(key);
  if (!files.client_ca.empty()) {
    auto ca = ReadPemFile(files.client_ca, "TLS client CA", "CERTIFICATE");
    if (!ca.ok()) return ca.status();
    tls.client_ca = *std::move(ca);
  }
  return std::optional<ServerTls>(std::move(tls));
}

absl::StatusOr<std::optional<ChannelTls>> LoadChannelTls(const ChannelTlsFiles& files) {
  if (!files.any()) return std::optional<ChannelTls>();
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError(
        "a TLS client certificate needs its private key (and the key its certificate)");
  }
  ChannelTls tls;
  if (!files.ca.empty()) {
    auto ca = ReadPemFile(files.ca, "TLS CA", "CERTIFICATE");
    if (!ca.ok()) return ca.status();
    tls.root_certs = *std::move(ca);
  }
  if (!files.cert.empty()) {
    auto cert = ReadPemFile(files.cert, "TLS client certificate", "CERTIFICATE");
    if (!cert.ok()) return cert.status();
    tls.cert_chain = *std::move(cert);
    auto key = ReadPemFile(files.key, "TLS client key", "PRIVATE KEY");
    if (!key.ok()) return key.status();
    tls.private_key = *std::move(key);
  }
  return std::optional<ChannelTls>(std::move(tls));
}

}  // namespace diffmesh
