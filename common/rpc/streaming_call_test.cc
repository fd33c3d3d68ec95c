// The server's own limit on one call (StreamingCall / RunUnary / BidiStreamingCall's
// max_duration, a stage's --max-request-time): a call whose client sent no deadline, or a later
// one, ends with DEADLINE_EXCEEDED at the limit. Real gRPC on loopback; the works stand in for
// stage cores, which check their CallContext between steps.
#include "common/rpc/streaming_call.h"

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/rpc/server.h"
#include "common/status/status_macros.h"
#include "diffmesh/v1/stages.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kCap = absl::Milliseconds(400);

// Works until its CallContext ends, as a stage core does between steps.
absl::Status WorkUntilStopped(CallContext& call, const char* where) {
  while (true) {
    RETURN_IF_ERROR(call.Check(where));
    absl::SleepFor(absl::Milliseconds(5));
  }
}

class EndlessEncoder final : public v1::EncoderService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* ctx, const v1::EncodeRequest*,
                                   v1::EncodeResponse* response) override {
    return RunUnary<v1::EncodeResponse>(
        ctx, response,
        [](CallContext& call, v1::EncodeResponse*) { return WorkUntilStopped(call, "encoder"); },
        kCap);
  }
};

class EndlessAr final : public v1::ArTokenService::CallbackService {
 public:
  grpc::ServerWriteReactor<v1::ArTokenChunk>* Generate(grpc::CallbackServerContext* ctx,
                                                       const v1::ArRequest*) override {
    return StreamingCall<v1::ArTokenChunk>::Start(
        ctx,
        [](CallContext& call, const StreamingCall<v1::ArTokenChunk>::Emit& emit) {
          v1::ArTokenChunk first;
          first.add_tokens(7);
          emit(first);
          return WorkUntilStopped(call, "ar");
        },
        kCap);
  }
};

class CallLimitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.host = "127.0.0.1";
    auto server = RunningServer::Start({&encoder_, &ar_}, options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
  }

  EndlessEncoder encoder_;
  EndlessAr ar_;
  std::unique_ptr<RunningServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(CallLimitTest, UnaryCallWithoutDeadlineEndsAtTheLimit) {
  auto stub = v1::EncoderService::NewStub(channel_);
  grpc::ClientContext ctx;  // no deadline
  v1::EncodeResponse response;
  const absl::Time start = absl::Now();
  const grpc::Status s = stub->Encode(&ctx, v1::EncodeRequest(), &response);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("encoder"));  // the server's status, not gRPC's
  EXPECT_GE(took, kCap);
  EXPECT_LT(took, kCap + absl::Seconds(5));
}

TEST_F(CallLimitTest, StreamingCallWithALaterDeadlineEndsAtTheLimit) {
  auto stub = v1::ArTokenService::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  const absl::Time start = absl::Now();
  auto reader = stub->Generate(&ctx, v1::ArRequest());
  v1::ArTokenChunk chunk;
  int chunks = 0;
  while (reader->Read(&chunk)) ++chunks;
  const grpc::Status s = reader->Finish();
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(chunks, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("ar"));
  EXPECT_GE(took, kCap);
  EXPECT_LT(took, kCap + absl::Seconds(5));
}

TEST_F(CallLimitTest, AnEarlierClientDeadlineStillWins) {
  auto stub = v1::EncoderService::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(100)));
  v1::EncodeResponse response;
  const absl::Time start = absl::Now();
  const grpc::Status s = stub->Encode(&ctx, v1::EncodeRequest(), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(absl::Now() - start, kCap);
}

}  // namespace
}  // namespace diffmesh
