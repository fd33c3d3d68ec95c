// End-to-end: `diffmesh up` wires a throw-away stage token, so that the stage services (AR,
// encoder, denoise) serve the orchestrator only: a direct call to a stage port without the
// token, or with a wrong one, is UNAUTHENTICATED while the mesh generates; health stays open.
#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "diffmesh/client.h"
#include "diffmesh/v1/stages.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace diffmesh {
namespace {

using testing::Binary;
using testing::Process;
using testing::ReadFile;

class StageAuthMeshTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    base_port_ = testing::FreePorts(14);
    ASSERT_GT(base_port_, 0);
    log_ = absl::StrCat(::testing::TempDir(), "/stage_auth_mesh_up.log");
    mesh_ = new Process({Binary("diffmesh"), "up", absl::StrCat("--base-port=", base_port_)}, log_);
    auto client = sdk::Client::Create({absl::StrCat("127.0.0.1:", base_port_)});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = client->release();
    absl::Status s = client_->WaitUntilServing(absl::Seconds(180), "diffmesh.v1.GenerationService");
    ASSERT_TRUE(s.ok()) << s << "\n" << ReadFile(log_);
  }
  static void TearDownTestSuite() {
    delete client_;
    delete mesh_;
  }

  static std::shared_ptr<grpc::Channel> Stage(int offset) {
    return grpc::CreateChannel(absl::StrCat("127.0.0.1:", base_port_ + offset),
                               grpc::InsecureChannelCredentials());
  }

  // `authorization` metadata of a direct call ("" for none).
  static void Prepare(grpc::ClientContext& ctx, const std::string& authorization) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
  }

  static int base_port_;
  static std::string log_;
  static Process* mesh_;
  static sdk::Client* client_;
};
int StageAuthMeshTest::base_port_ = 0;
std::string StageAuthMeshTest::log_;
Process* StageAuthMeshTest::mesh_ = nullptr;
sdk::Client* StageAuthMeshTest::client_ = nullptr;

const char* const kAuthorizations[] = {"", "Bearer not-the-stage-token", "Basic abc"};

TEST_F(StageAuthMeshTest, DirectStageCallsWithoutTheTokenAreUnauthenticated) {
  for (const std::string authorization : kAuthorizations) {
    SCOPED_TRACE(authorization.empty() ? "no token" : authorization);
    {
      auto stub = v1::ArTokenService::NewStub(Stage(1));
      grpc::ClientContext ctx;
      Prepare(ctx, authorization);
      v1::ArRequest request;
      request.set_prompt("a sign");
      auto reader = stub->Generate(&ctx, request);
      v1::ArTokenChunk chunk;
      EXPECT_FALSE(reader->Read(&chunk)) << "the AR stage streamed tokens";
      grpc::Status s = reader->Finish();
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << "ar: " << s.error_message();
    }
    {
      auto stub = v1::EncoderService::NewStub(Stage(2));
      grpc::ClientContext ctx;
      Prepare(ctx, authorization);
      v1::EncodeRequest request;
      v1::EncodeResponse response;
      grpc::Status s = stub->Encode(&ctx, request, &response);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << "encoder: " << s.error_message();
    }
    {
      auto stub = v1::DenoiseService::NewStub(Stage(3));
      grpc::ClientContext ctx;
      Prepare(ctx, authorization);
      v1::DenoiseRequest request;
      auto reader = stub->Denoise(&ctx, request);
      v1::DenoiseEvent event;
      EXPECT_FALSE(reader->Read(&event));
      grpc::Status s = reader->Finish();
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << "denoise: " << s.error_message();
    }
    {
      auto stub = v1::DenoiseService::NewStub(Stage(3));
      grpc::ClientContext ctx;
      Prepare(ctx, authorization);
      auto stream = stub->DenoiseStream(&ctx);
      stream->WritesDone();
      v1::DenoiseEvent event;
      EXPECT_FALSE(stream->Read(&event));
      grpc::Status s = stream->Finish();
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << "denoise stream: " << s.error_message();
    }
  }
}

TEST_F(StageAuthMeshTest, HealthStaysOpenAndTheMeshGenerates) {
  for (int offset = 1; offset <= 3; ++offset) {
    EXPECT_TRUE(sdk::WaitUntilServing(absl::StrCat("127.0.0.1:", base_port_ + offset),
                                      absl::Seconds(5))
                    .ok())
        << "port +" << offset;
  }
  v1::GenerateRequest r;
  r.set_prompt("a sign that says \"stage token\"");
  r.set_seed(3);
  r.set_height(64);
  r.set_width(64);
  r.set_steps(2);
  auto result = client_->Generate(r, nullptr, nullptr, absl::Seconds(60));
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << ReadFile(log_);
  ASSERT_EQ(result->outputs_size(), 1);
  EXPECT_GT(result->outputs(0).data().size(), 100u);
}

}  // namespace
}  // namespace diffmesh
