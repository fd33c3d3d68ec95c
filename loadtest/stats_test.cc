#include "loadtest/stats.h"

#include "gtest/gtest.h"

namespace diffmesh::loadtest {
namespace {

TEST(StatsTest, PercentilesInterpolateBetweenRanks) {
  std::vector<double> v;
  for (int i = 1; i <= 101; ++i) v.push_back(i);  // 1..101: the q-quantile is 1 + 100 q
  const Summary s = Summarize(v);
  EXPECT_EQ(s.count, 101);
  EXPECT_DOUBLE_EQ(s.p50, 51);
  EXPECT_DOUBLE_EQ(s.p90, 91);
  EXPECT_DOUBLE_EQ(s.p99, 100);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 101);
  EXPECT_DOUBLE_EQ(s.mean, 51);
  EXPECT_DOUBLE_EQ(Percentile({0, 10}, 0.25), 2.5);
}

TEST(StatsTest, UnsortedInputAndOrder) {
  const Summary s = Summarize({5, 1, 4, 2, 3, 100});
  EXPECT_LE(s.min, s.p50);
  EXPECT_LE(s.p50, s.p90);
  EXPECT_LE(s.p90, s.p99);
  EXPECT_LE(s.p99, s.max);
  EXPECT_DOUBLE_EQ(s.p50, 3.5);
  EXPECT_DOUBLE_EQ(s.max, 100);
}

TEST(StatsTest, OneAndNone) {
  const Summary one = Summarize({0.25});
  EXPECT_DOUBLE_EQ(one.p50, 0.25);
  EXPECT_DOUBLE_EQ(one.p99, 0.25);
  const Summary none = Summarize({});
  EXPECT_EQ(none.count, 0);
  EXPECT_DOUBLE_EQ(none.p99, 0);
}

}  // namespace
}  // namespace diffmesh::loadtest
