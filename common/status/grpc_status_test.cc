#include "common/status/grpc_status.h"

#include <string>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

TEST(GrpcStatusTest, CodesAndMessagesRoundTrip) {
  for (auto code : {absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound,
                    absl::StatusCode::kUnavailable, absl::StatusCode::kResourceExhausted,
                    absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kCancelled}) {
    absl::Status in(code, "field 'steps' must be in 1..200");
    grpc::Status g = ToGrpcStatus(in);
    EXPECT_EQ(static_cast<int>(g.error_code()), static_cast<int>(code));
    EXPECT_EQ(FromGrpcStatus(g), in);
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(GrpcStatusTest, LongMessagesAreCapped) {
  grpc::Status g = ToGrpcStatus(absl::InternalError(std::string(10000, 'x')));
  EXPECT_EQ(g.error_message().size(), kMaxStatusMessageBytes);
  EXPECT_EQ(g.error_message().substr(kMaxStatusMessageBytes - 3), "...");
}

}  // namespace
}  // namespace diffmesh
