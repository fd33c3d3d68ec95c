#include "common/call/call_context.h"

#include <atomic>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

TEST(CallContextTest, CancelRunsHooksOnceAndChecksFail) {
  CallContext ctx;
  std::atomic<int> calls{0};
  {
    ScopedCancelHook hook(ctx, [&] { ++calls; });
    EXPECT_TRUE(ctx.Check("ar").ok());
    ctx.Cancel();
    ctx.Cancel();
  }
  EXPECT_EQ(calls, 1);
  absl::Status s = ctx.Check("denoise step");
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_NE(s.message().find("denoise step"), std::string::npos);
  // A hook added after cancellation runs at once.
  ScopedCancelHook late(ctx, [&] { ++calls; });
  EXPECT_EQ(calls, 2);
}

TEST(CallContextTest, RemovedHookDoesNotRun) {
  CallContext ctx;
  int calls = 0;
  { ScopedCancelHook hook(ctx, [&] { ++calls; }); }
  ctx.Cancel();
  EXPECT_EQ(calls, 0);
}

TEST(CallContextTest, DeadlineExceeded) {
  CallContext ctx(absl::Now() - absl::Milliseconds(1));
  EXPECT_EQ(ctx.Check("encoder").code(), absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace diffmesh
