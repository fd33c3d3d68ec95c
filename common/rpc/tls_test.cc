// RunningServer and CreateChannel with TLS and mutual TLS, on loopback, with the throw-away
// certificates of scripts/make-test-certs.sh (the `test_certs` CTest fixture): who gets through
// the handshake, and the file errors that name the file.
#include "common/rpc/tls.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/rpc/server.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

std::string CertDir() {
  const char* d = std::getenv("DIFFMESH_TEST_CERTS");
  return d != nullptr ? d : "";
}
std::string Cert(const std::string& name) { return absl::StrCat(CertDir(), "/", name); }

ServerTls MustLoadServer(const std::string& client_ca = "") {
  auto tls = LoadServerTls({Cert("server.pem"), Cert("server.key"), client_ca});
  EXPECT_TRUE(tls.ok()) << tls.status();
  return tls.ok() && tls->has_value() ? **tls : ServerTls{};
}

std::optional<ChannelTls> MustLoadChannel(const ChannelTlsFiles& files) {
  auto tls = LoadChannelTls(files);
  EXPECT_TRUE(tls.ok()) << tls.status();
  return tls.ok() ? *tls : std::nullopt;
}

// A health check over `options` against 127.0.0.1:port (or `host`:port).
grpc::Status Check(int port, const ChannelOptions& options,
                   const std::string& host = "127.0.0.1") {
  auto stub =
      grpc::health::v1::Health::NewStub(CreateChannel(absl::StrCat(host, ":", port), options));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  return stub->Check(&ctx, request, &response);
}

void ExpectNames(const absl::Status& status, const std::string& what) {
  EXPECT_NE(status.message().find(what), std::string::npos) << status << " does not name " << what;
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CertDir().empty()) FAIL() << "DIFFMESH_TEST_CERTS is not set (run through ctest)";
  }
  std::unique_ptr<RunningServer> Serve(std::optional<ServerTls> tls) {
    ServerOptions o;
    o.host = "127.0.0.1";
    o.tls = std::move(tls);
    auto server = RunningServer::Start({}, o);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }
};

TEST_F(TlsTest, TlsServerAcceptsClientsThatTrustItsCaOnly) {
  auto server = Serve(MustLoadServer());
  ASSERT_NE(server, nullptr);
  ChannelOptions trusted;
  trusted.tls = MustLoadChannel({Cert("ca.pem"), "", ""});
  EXPECT_TRUE(Check(server->port(), trusted).ok());
  EXPECT_TRUE(Check(server->port(), trusted, "localhost").ok()) << "DNS:localhost is in the SAN";

  EXPECT_FALSE(Check(server->port(), ChannelOptions{}).ok()) << "plaintext to a TLS port";
  ChannelOptions other;
  other.tls = MustLoadChannel({Cert("other-ca.pem"), "", ""});
  EXPECT_FALSE(Check(server->port(), other).ok()) << "a CA that did not sign the server";
}

TEST_F(TlsTest, TargetNameOverrideIsCheckedAgainstTheCertificate) {
  auto server = Serve(MustLoadServer());
  ASSERT_NE(server, nullptr);
  ChannelOptions o;
  o.tls = MustLoadChannel({Cert("ca.pem"), "", ""});
  o.tls->target_name_override = "localhost";
  EXPECT_TRUE(Check(server->port(), o).ok());
  o.tls->target_name_override = "not-in-the-certificate.example";
  EXPECT_FALSE(Check(server->port(), o).ok());
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificateFromTheClientCa) {
  auto server = Serve(MustLoadServer(Cert("ca.pem")));
  ASSERT_NE(server, nullptr);
  ChannelOptions with_cert;
  with_cert.tls = MustLoadChannel({Cert("ca.pem"), Cert("client.pem"), Cert("client.key")});
  EXPECT_TRUE(Check(server->port(), with_cert).ok());

  ChannelOptions no_cert;
  no_cert.tls = MustLoadChannel({Cert("ca.pem"), "", ""});
  grpc::Status s = Check(server->port(), no_cert);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();

  ChannelOptions wrong_ca;
  wrong_ca.tls =
      MustLoadChannel({Cert("ca.pem"), Cert("other-client.pem"), Cert("other-client.key")});
  s = Check(server->port(), wrong_ca);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();

  EXPECT_FALSE(Check(server->port(), ChannelOptions{}).ok()) << "plaintext";
}

TEST_F(TlsTest, AKeyThatIsNotTheCertificatesFailsToStartAndSaysTls) {
  auto tls = LoadServerTls({Cert("server.pem"), Cert("client.key"), ""});
  ASSERT_TRUE(tls.ok()) << tls.status();
  ServerOptions o;
  o.host = "127.0.0.1";
  o.tls = **tls;
  auto server = RunningServer::Start({}, o);
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("TLS"), std::string::npos) << server.status();
}

TEST_F(TlsTest, FileErrorsNameTheFile) {
  auto missing = LoadServerTls({Cert("nope.pem"), Cert("server.key"), ""});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  ExpectNames(missing.status(), Cert("nope.pem"));

  auto swapped = LoadServerTls({Cert("server.key"), Cert("server.pem"), ""});
  EXPECT_EQ(swapped.status().code(), absl::StatusCode::kInvalidArgument);
  ExpectNames(swapped.status(), Cert("server.key"));
  ExpectNames(swapped.status(), "CERTIFICATE");

  auto dir = LoadServerTls({CertDir(), Cert("server.key"), ""});
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
  ExpectNames(dir.status(), CertDir());

  auto bad_ca = LoadServerTls({Cert("server.pem"), Cert("server.key"), Cert("client.key")});
  ExpectNames(bad_ca.status(), Cert("client.key"));

  const std::string encrypted = absl::StrCat(::testing::TempDir(), "/encrypted.key");
  std::ofstream(encrypted) << "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
                              "-----END ENCRYPTED PRIVATE KEY-----\n";
  auto enc = LoadServerTls({Cert("server.pem"), encrypted, ""});
  ExpectNames(enc.status(), "encrypted");
  std::remove(encrypted.c_str());

  EXPECT_EQ(LoadServerTls({Cert("server.pem"), "", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadServerTls({"", "", Cert("ca.pem")}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadChannelTls({"", Cert("client.pem"), ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Nothing named: plaintext, not an error.
  auto none = LoadServerTls({});
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto none_channel = LoadChannelTls({});
  ASSERT_TRUE(none_channel.ok());
  EXPECT_FALSE(none_channel->has_value());
}

}  // namespace
}  // namespace diffmesh
