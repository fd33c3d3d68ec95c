// End-to-end: `diffmesh up` with mutual TLS on every service (the orchestrator's stage calls
// included) and an API token on the orchestrator, with the throw-away certificates of
// scripts/make-test-certs.sh (CTest fixture `test_certs`). Who gets through, who does not, and
// that a refused call starts no generation.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "diffmesh/client.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace diffmesh {
namespace {

using testing::Binary;
using testing::Process;
using testing::ReadFile;

constexpr char kToken[] = "mesh-token-0123456789";

std::string Cert(const std::string& name) {
  const char* d = std::getenv("DIFFMESH_TEST_CERTS");
  return absl::StrCat(d != nullptr ? d : "", "/", name);
}

// The sum of diffmesh_requests_total (every code) on a Prometheus endpoint, or -1.
double RequestsTotal(int port) {
  const std::string response = testing::HttpGet(port, "/metrics");
  if (response.empty()) return -1;
  double total = 0;
  for (absl::string_view line : absl::StrSplit(response, '\n')) {
    if (!absl::StartsWith(line, "diffmesh_requests_total{")) continue;
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) total += v;
  }
  return total;
}

class SecureMeshTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_NE(std::getenv("DIFFMESH_TEST_CERTS"), nullptr) << "run through ctest (test_certs)";
    base_port_ = testing::FreePorts(14);
    ASSERT_GT(base_port_, 0);
    tokens_ = absl::StrCat(::testing::TempDir(), "/secure_mesh_tokens.txt");
    std::ofstream(tokens_) << "# accepted API tokens\n\nsome-other-token\n" << kToken << "\n";
    token_file_ = absl::StrCat(::testing::TempDir(), "/secure_mesh_client_token.txt");
    std::ofstream(token_file_) << kToken << "\n";
    log_ = absl::StrCat(::testing::TempDir(), "/secure_mesh_up.log");
    mesh_ = new Process({Binary("diffmesh"), "up", absl::StrCat("--base-port=", base_port_),
                         "--tls-cert", Cert("server.pem"), "--tls-key", Cert("server.key"),
                         "--tls-ca", Cert("ca.pem"), "--tls-client-ca", Cert("ca.pem"),
                         "--stage-tls-cert", Cert("client.pem"),
                         "--stage-tls-key", Cert("client.key"), "--auth-token-file", tokens_},
                        log_);
    auto client = sdk::Client::Create(Options(Cert("client.pem"), Cert("client.key"), kToken));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = client->release();
    absl::Status s = client_->WaitUntilServing(absl::Seconds(180));
    ASSERT_TRUE(s.ok()) << s << "\n" << ReadFile(log_);
  }
  static void TearDownTestSuite() {
    delete client_;
    delete mesh_;
  }

  static sdk::ClientOptions Options(const std::string& cert, const std::string& key,
                                    const std::string& token, int port_offset = 0) {
    sdk::ClientOptions o;
    o.address = absl::StrCat("127.0.0.1:", base_port_ + port_offset);
    o.tls = sdk::TlsOptions{Cert("ca.pem"), cert, key, ""};
    o.bearer_token = token;
    return o;
  }

  static v1::GenerateRequest Request() {
    v1::GenerateRequest r;
    r.set_prompt("a sign that says \"tls\"");
    r.set_seed(5);
    r.set_height(64);
    r.set_width(64);
    r.set_steps(2);
    return r;
  }

  // Generate through `client`; the number of events it saw (an Accepted means work started).
  static absl::StatusOr<v1::GenerateResult> Generate(sdk::Client& client, int* events) {
    *events = 0;
    return client.Generate(Request(), [events](const v1::GenerateEvent&) { ++*events; }, nullptr,
                           absl::Seconds(60));
  }

  static int base_port_;
  static std::string tokens_, token_file_, log_;
  static Process* mesh_;
  static sdk::Client* client_;
};
int SecureMeshTest::base_port_ = 0;
std::string SecureMeshTest::tokens_;
std::string SecureMeshTest::token_file_;
std::string SecureMeshTest::log_;
Process* SecureMeshTest::mesh_ = nullptr;
sdk::Client* SecureMeshTest::client_ = nullptr;

TEST_F(SecureMeshTest, TheRightCertificateAndTokenGenerate) {
  int events = 0;
  auto result = Generate(*client_, &events);
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << ReadFile(log_);
  ASSERT_EQ(result->outputs_size(), 1);
  EXPECT_GT(result->outputs(0).data().size(), 100u);
  EXPECT_EQ(result->metadata().request().seed(), 5u);
  EXPECT_GT(events, 2);
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->default_model(), "glm-image-tiny");
}

TEST_F(SecureMeshTest, MissingOrWrongTokenIsUnauthenticatedAndStartsNothing) {
  const double before = RequestsTotal(base_port_ + 10);
  ASSERT_GE(before, 0) << "orchestrator metrics unreachable";
  for (const std::string token : {"", "not-the-token", "mesh-token-012345678"}) {
    auto client = sdk::Client::Create(Options(Cert("client.pem"), Cert("client.key"), token));
    ASSERT_TRUE(client.ok()) << client.status();
    int events = 0;
    auto result = Generate(**client, &events);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated) << result.status();
    EXPECT_EQ(events, 0) << "token '" << token << "'";
    if (!token.empty()) {
      EXPECT_EQ(result.status().message().find(token), std::string::npos) << result.status();
    }
    auto models = (*client)->ListModels();
    EXPECT_EQ(models.status().code(), absl::StatusCode::kUnauthenticated) << models.status();
    // Health stays open: no token needed.
    EXPECT_TRUE((*client)->WaitUntilServing(absl::Seconds(10)).ok());
  }
  EXPECT_EQ(RequestsTotal(base_port_ + 10), before) << "a rejected call reached the pipeline";
  EXPECT_EQ(ReadFile(log_).find(kToken), std::string::npos) << "the token was logged";
}

TEST_F(SecureMeshTest, ClientsWithoutTheRightCertificateAreRefused) {
  const double before = RequestsTotal(base_port_ + 10);
  ASSERT_GE(before, 0) << "orchestrator metrics unreachable";
  struct Case {
    std::string name;
    sdk::ClientOptions options;
  };
  sdk::ClientOptions plaintext;
  plaintext.address = absl::StrCat("127.0.0.1:", base_port_);
  plaintext.bearer_token = kToken;
  const std::vector<Case> cases = {
      {"no client certificate", Options("", "", kToken)},
      {"a certificate from another CA",
       Options(Cert("other-client.pem"), Cert("other-client.key"), kToken)},
      {"plaintext", plaintext},
  };
  for (const auto& c : cases) {
    auto client = sdk::Client::Create(c.options);
    ASSERT_TRUE(client.ok()) << c.name << ": " << client.status();
    int events = 0;
    auto result = Generate(**client, &events);
    EXPECT_FALSE(result.ok()) << c.name;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable)
        << c.name << ": " << result.status();
    EXPECT_EQ(events, 0) << c.name;
    EXPECT_FALSE((*client)->WaitUntilServing(absl::Seconds(2)).ok()) << c.name << ": health";
  }
  EXPECT_EQ(RequestsTotal(base_port_ + 10), before) << "a refused call reached the pipeline";
}

// The stage services speak mutual TLS too: only the mesh's client certificate gets through.
TEST_F(SecureMeshTest, StageServicesRequireTheClientCertificateToo) {
  for (int offset = 1; offset <= 3; ++offset) {
    auto with_cert =
        sdk::Client::Create(Options(Cert("client.pem"), Cert("client.key"), "", offset));
    ASSERT_TRUE(with_cert.ok());
    EXPECT_TRUE((*with_cert)->WaitUntilServing(absl::Seconds(10)).ok()) << "port +" << offset;
    auto without = sdk::Client::Create(Options("", "", "", offset));
    ASSERT_TRUE(without.ok());
    EXPECT_FALSE((*without)->WaitUntilServing(absl::Seconds(2)).ok()) << "port +" << offset;
    EXPECT_FALSE(sdk::WaitUntilServing(absl::StrCat("127.0.0.1:", base_port_ + offset),
                                       absl::Seconds(2)).ok())
        << "plaintext, port +" << offset;
  }
}

// `diffmesh generate --server` with the TLS and token flags gives the C++ SDK's bytes; without
// the token it fails with the server's UNAUTHENTICATED.
TEST_F(SecureMeshTest, CliPassesTlsAndTokenFlagsToTheSdk) {
  auto sdk_result = client_->Generate(Request());
  ASSERT_TRUE(sdk_result.ok()) << sdk_result.status();
  const std::string out = absl::StrCat(::testing::TempDir(), "/secure_cli.png");
  const std::vector<std::string> base = {
      Binary("diffmesh"), "generate", "--server", absl::StrCat("127.0.0.1:", base_port_),
      "--tls-ca", Cert("ca.pem"), "--tls-cert", Cert("client.pem"), "--tls-key", Cert("client.key"),
      "--prompt", Request().prompt(), "--seed", "5", "--height", "64", "--width", "64",
      "--steps", "2", "--output", out};
  std::vector<std::string> with_token = base;
  with_token.insert(with_token.end(), {"--token-file", token_file_});
  std::string log;
  int status = testing::RunCommand(with_token, &log);
  ASSERT_EQ(status, 0) << log;
  EXPECT_EQ(ReadFile(out), sdk_result->outputs(0).data()) << "CLI and C++ SDK bytes differ";

  status = testing::RunCommand(base, &log);
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(log.find("UNAUTHENTICATED"), std::string::npos) << log;

  status = testing::RunCommand({Binary("diffmesh"), "models", "--server",
                                absl::StrCat("127.0.0.1:", base_port_), "--tls-ca",
                                "/nonexistent/ca.pem"},
                               &log);
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(log.find("/nonexistent/ca.pem"), std::string::npos) << log;
}

}  // namespace
}  // namespace diffmesh
