#include "common/call/call_context.h"

#include <atomic>
#include <memory>
#include <thread>

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

// A hook unregistered while Cancel() runs on another thread is either finished or never runs
// once RemoveOnCancel returns: what it captured may be destroyed right after.
TEST(CallContextTest, RemovingAHookWaitsForARunningCancel) {
  for (int round = 0; round < 100; ++round) {
    CallContext ctx;
    std::atomic<bool> entered{false}, running{false};
    auto hook = std::make_unique<ScopedCancelHook>(ctx, [&] {
      running = true;
      entered = true;
      std::this_thread::sleep_for(std::chrono::microseconds(300));
      running = false;
    });
    std::thread canceller([&] { ctx.Cancel(); });
    if (round % 2 == 0) {
      while (!entered) std::this_thread::yield();  // remove while the hook runs
    }
    hook.reset();  // RemoveOnCancel
    EXPECT_FALSE(running) << "round " << round;
    canceller.join();
  }
}

TEST(CallContextTest, DeadlineExceeded) {
  CallContext ctx(absl::Now() - absl::Milliseconds(1));
  EXPECT_EQ(ctx.Check("encoder").code(), absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace diffmesh
