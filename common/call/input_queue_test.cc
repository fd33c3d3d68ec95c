#include "common/call/input_queue.h"

#include <thread>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

TEST(InputQueueTest, ItemsInOrderThenTheCleanEnd) {
  InputQueue<int> q;
  EXPECT_TRUE(q.Push(1));
  EXPECT_TRUE(q.Push(2));
  q.Close();
  EXPECT_FALSE(q.Push(3));  // closed: dropped
  EXPECT_EQ(**q.Next(absl::Seconds(1)), 1);
  EXPECT_EQ(**q.Next(absl::Seconds(1)), 2);
  EXPECT_EQ(q.Next(absl::Seconds(1)).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(InputQueueTest, TimeoutThenAnItemFromAnotherThread) {
  InputQueue<int> q;
  auto none = q.Next(absl::Milliseconds(10));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  std::thread producer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    q.Push(7);
  });
  std::optional<int> got;
  while (!got) {
    auto next = q.Next(absl::Milliseconds(5));
    ASSERT_TRUE(next.ok());
    got = *next;
  }
  EXPECT_EQ(*got, 7);
  producer.join();
}

TEST(InputQueueTest, AProducersFailureComesAfterItsItemsAndTheFirstCloseWins) {
  InputQueue<int> q;
  q.Push(1);
  q.Close(absl::UnavailableError("ar down"));
  q.Close();  // ignored
  EXPECT_EQ(**q.Next(absl::Seconds(1)), 1);
  auto end = q.Next(absl::Seconds(1));
  EXPECT_EQ(end.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(end.status().message(), "ar down");
}

}  // namespace
}  // namespace diffmesh
