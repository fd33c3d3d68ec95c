// End-to-end: the four real binaries on free loopback ports, driven through the public API.
#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "diffmesh/client.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace diffmesh {
namespace {

using testing::Binary;
using testing::Process;
using testing::ReadFile;

bool Alive(pid_t pid) { return kill(pid, 0) == 0; }

class MeshTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    base_port_ = testing::FreePorts(14);  // gRPC on P..P+3, rendezvous P+9, metrics P+10..P+13
    ASSERT_GT(base_port_, 0);
    log_ = absl::StrCat(::testing::TempDir(), "/mesh_up.log");
    mesh_ = new Process({Binary("diffmesh"), "up", absl::StrCat("--base-port=", base_port_)}, log_);
    sdk::ClientOptions o;
    o.address = absl::StrCat("127.0.0.1:", base_port_);
    client_ = sdk::Client::Create(o)->release();
    absl::Status s = client_->WaitUntilServing(absl::Seconds(120));
    ASSERT_TRUE(s.ok()) << s << "\n" << ReadFile(log_);
  }
  static void TearDownTestSuite() {
    delete client_;
    delete mesh_;
  }

  static v1::GenerateRequest Request() {
    v1::GenerateRequest r;
    r.set_prompt("A lighthouse with a sign that says \"diffmesh\"");
    r.set_seed(42);
    r.set_steps(4);
    return r;
  }

  static int base_port_;
  static std::string log_;
  static Process* mesh_;
  static sdk::Client* client_;
};
int MeshTest::base_port_ = 0;
std::string MeshTest::log_;
Process* MeshTest::mesh_ = nullptr;
sdk::Client* MeshTest::client_ = nullptr;

TEST_F(MeshTest, EveryServiceReportsServing) {
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(sdk::WaitUntilServing(absl::StrCat("127.0.0.1:", base_port_ + i), absl::Seconds(5)).ok());
  }
  EXPECT_TRUE(sdk::WaitUntilServing(absl::StrCat("127.0.0.1:", base_port_ + 3), absl::Seconds(5),
                                    "diffmesh.v1.DenoiseService").ok());
  auto models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->default_model(), "glm-image-tiny");
}

// Server reflection lists each service's API (and the health service).
TEST_F(MeshTest, EveryServiceAnswersReflection) {
  const std::vector<std::string> expected = {"diffmesh.v1.GenerationService", "diffmesh.v1.ArTokenService",
                                             "diffmesh.v1.EncoderService", "diffmesh.v1.DenoiseService"};
  for (int i = 0; i < 4; ++i) {
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", base_port_ + i),
                                       grpc::InsecureChannelCredentials());
    auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto stream = stub->ServerReflectionInfo(&ctx);
    grpc::reflection::v1alpha::ServerReflectionRequest req;
    req.set_list_services("");
    ASSERT_TRUE(stream->Write(req));
    stream->WritesDone();
    grpc::reflection::v1alpha::ServerReflectionResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    std::vector<std::string> names;
    for (const auto& s : resp.list_services_response().service()) names.push_back(s.name());
    EXPECT_NE(std::find(names.begin(), names.end(), expected[i]), names.end()) << "port +" << i;
    EXPECT_NE(std::find(names.begin(), names.end(), "grpc.health.v1.Health"), names.end());
    while (stream->Read(&resp)) {
    }
    EXPECT_TRUE(stream->Finish().ok());
  }
}

TEST_F(MeshTest, MeshAndEmbeddedGiveByteIdenticalPngs) {
  std::vector<v1::GenerateEvent> events;
  auto result = client_->Generate(Request(), [&](const v1::GenerateEvent& e) { events.push_back(e); });
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->outputs_size(), 1);
  const std::string& png = result->outputs(0).data();
  ASSERT_GT(png.size(), 100u);
  EXPECT_EQ(result->outputs(0).info().mime_type(), "image/png");
  EXPECT_EQ(result->metadata().request().seed(), 42u);
  EXPECT_EQ(result->metadata().request().width(), 256);
  // Progress: accepted first, then stages, AR tokens, 4 denoise steps, result last.
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.front().has_accepted());
  EXPECT_TRUE(events.back().has_result());
  int steps = 0, ar = 0;
  for (const auto& e : events) {
    steps += e.has_progress() && e.progress().stage() == "denoise";
    ar += e.has_progress() && e.progress().stage() == "ar";
  }
  EXPECT_EQ(steps, 4);
  EXPECT_GT(ar, 0);

  const std::string out = absl::StrCat(::testing::TempDir(), "/embedded.png");
  std::string log;
  int status = testing::RunCommand({Binary("diffmesh"), "generate", "--prompt", Request().prompt(),
                                    "--seed", "42", "--steps", "4", "--output", out}, &log);
  ASSERT_EQ(status, 0) << log;
  EXPECT_EQ(ReadFile(out), png) << "embedded and mesh outputs differ";
}

// GLM-Image editing through the mesh: the image goes to the AR stage (its VQ tokens into the
// prompt) and to the denoise group (its latents into the DiT's condition keys/values). The CLI
// with --image in one process gives the same bytes.
TEST_F(MeshTest, AnImageEditGivesTheSameBytesThroughTheMeshAndEmbedded) {
  auto source = client_->Generate(Request());
  ASSERT_TRUE(source.ok()) << source.status();
  const std::string image = absl::StrCat(::testing::TempDir(), "/edit_source.png");
  std::ofstream(image, std::ios::binary) << source->outputs(0).data();
  v1::GenerateRequest r = Request();
  r.set_prompt("make the sign say \"edited\"");
  v1::InputMedia* in = r.add_inputs();
  in->set_role(v1::MEDIA_ROLE_EDIT_IMAGE);
  in->set_data(source->outputs(0).data());
  auto edited = client_->Generate(r);
  ASSERT_TRUE(edited.ok()) << edited.status();
  ASSERT_EQ(edited->outputs_size(), 1);
  EXPECT_NE(edited->outputs(0).data(), source->outputs(0).data());
  EXPECT_EQ(edited->metadata().request().inputs_size(), 1);
  EXPECT_TRUE(edited->metadata().request().inputs(0).data().empty());  // reported without bytes

  const std::string out = absl::StrCat(::testing::TempDir(), "/edited.png");
  std::string log;
  int status = testing::RunCommand({Binary("diffmesh"), "generate", "--prompt", r.prompt(),
                                    "--image", image, "--seed", "42", "--steps", "4", "--output",
                                    out}, &log);
  ASSERT_EQ(status, 0) << log;
  EXPECT_EQ(ReadFile(out), edited->outputs(0).data()) << "embedded and mesh edits differ";

  // Bytes that are no image are refused before any stage runs, naming the input.
  in->set_data("\x89PNG but then nothing");
  auto bad = client_->Generate(r);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message().substr(0, 14), "inputs[0].data") << bad.status();
}

TEST_F(MeshTest, BadInputIsRejectedThroughThePublicApi) {
  struct Case {
    std::function<void(v1::GenerateRequest&)> edit;
    absl::StatusCode code;
    std::string field;
  };
  std::vector<Case> cases = {
      {[](auto& r) { r.set_height(250); }, absl::StatusCode::kInvalidArgument, "height"},
      {[](auto& r) { r.set_width(1024); }, absl::StatusCode::kInvalidArgument, "width"},
      {[](auto& r) { r.set_steps(500); }, absl::StatusCode::kInvalidArgument, "steps"},
      {[](auto& r) { r.mutable_guidance()->mutable_main()->set_cfg_scale(NAN); },
       absl::StatusCode::kInvalidArgument, "guidance.main.cfg_scale"},
      {[](auto& r) { r.mutable_guidance()->mutable_main()->set_cfg_scale(3e38f); },
       absl::StatusCode::kInvalidArgument, "guidance.main.cfg_scale"},
      {[](auto& r) { r.set_request_id(std::string(1000, 'r')); },
       absl::StatusCode::kInvalidArgument, "request_id"},
      {[](auto& r) { r.set_prompt(std::string(3000, 'a')); }, absl::StatusCode::kInvalidArgument, "prompt"},
      {[](auto& r) { r.set_model("flux"); }, absl::StatusCode::kNotFound, "model"},
  };
  for (const auto& c : cases) {
    v1::GenerateRequest r = Request();
    c.edit(r);
    auto result = client_->Generate(r);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    EXPECT_NE(result.status().message().find(c.field), std::string::npos) << result.status();
  }
}

TEST_F(MeshTest, CliExitsNonZeroWithTheServersMessage) {
  std::string log;
  int status = testing::RunCommand({Binary("diffmesh"), "generate", "--server",
                                    absl::StrCat("127.0.0.1:", base_port_), "--prompt", "x",
                                    "--steps", "0", "--output", "/dev/null"}, &log);
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(log.find("steps"), std::string::npos) << log;
  status = testing::RunCommand({Binary("diffmesh"), "generate", "--server",
                                absl::StrCat("127.0.0.1:", base_port_), "--prompt", "x",
                                "--width", "257", "--output", "/dev/null"}, &log);
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(log.find("INVALID_ARGUMENT: width"), std::string::npos) << log;
}

TEST_F(MeshTest, DeadlineReachesTheStages) {
  v1::GenerateRequest r = Request();
  r.set_height(512);
  r.set_width(512);
  r.set_steps(200);
  const absl::Time start = absl::Now();
  auto result = client_->Generate(r, nullptr, nullptr, absl::Milliseconds(800));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
  // The stages stopped too: the next request is not stuck behind 200 steps at 512².
  auto next = client_->Generate(Request());
  EXPECT_TRUE(next.ok()) << next.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(60));
}

TEST_F(MeshTest, CancelFromAnotherThread) {
  v1::GenerateRequest r = Request();
  r.set_steps(200);
  sdk::CancelHandle cancel;
  auto result = client_->Generate(r, [&](const v1::GenerateEvent& e) {
    if (e.has_progress() && e.progress().stage() == "denoise" && e.progress().done() == 1) {
      std::thread([&cancel] { cancel.Cancel(); }).detach();
    }
  }, &cancel);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
}

TEST(MeshDownTest, AStageThatIsDownIsNamedAndUnavailable) {
  const int port = testing::FreePorts(4);
  ASSERT_GT(port, 0);
  // Only the orchestrator runs; its stages point at closed ports.
  Process orchestrator({Binary("orchestrator"), "--host=127.0.0.1", absl::StrCat("--port=", port),
                        absl::StrCat("--ar-address=127.0.0.1:", port + 1),
                        absl::StrCat("--encoder-address=127.0.0.1:", port + 2),
                        absl::StrCat("--denoise-address=127.0.0.1:", port + 3)});
  sdk::ClientOptions o;
  o.address = absl::StrCat("127.0.0.1:", port);
  auto client = sdk::Client::Create(o);
  ASSERT_TRUE((*client)->WaitUntilServing(absl::Seconds(30)).ok());
  v1::GenerateRequest r;
  r.set_prompt("anything");
  const absl::Time start = absl::Now();
  auto result = (*client)->Generate(r, nullptr, nullptr, absl::Seconds(20));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_NE(result.status().message().find("stage '"), std::string::npos) << result.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

TEST(MeshLifecycleTest, SigtermStopsEveryServiceWithoutOrphans) {
  const int port = testing::FreePorts(14);
  ASSERT_GT(port, 0);
  const std::string log = absl::StrCat(::testing::TempDir(), "/mesh_lifecycle.log");
  Process mesh({Binary("diffmesh"), "up", absl::StrCat("--base-port=", port)}, log);
  ASSERT_TRUE(sdk::WaitUntilServing(absl::StrCat("127.0.0.1:", port), absl::Seconds(120)).ok());
  // The mesh prints the children's pids once all are SERVING.
  std::vector<pid_t> pids;
  for (int i = 0; i < 200 && pids.size() < 4; ++i) {
    pids.clear();
    std::istringstream in(ReadFile(log));
    std::string line;
    while (std::getline(in, line)) {
      auto at = line.find("(pid ");
      if (at != std::string::npos) pids.push_back(std::stoi(line.substr(at + 5)));
    }
    usleep(20000);
  }
  ASSERT_EQ(pids.size(), 4u) << ReadFile(log);
  for (pid_t p : pids) EXPECT_TRUE(Alive(p));
  const int status = mesh.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  for (pid_t p : pids) EXPECT_FALSE(Alive(p)) << "orphan " << p;
}

}  // namespace
}  // namespace diffmesh
