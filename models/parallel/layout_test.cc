#include "models/parallel/layout.h"

#include <algorithm>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace diffmesh::models::parallel {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr Axis kAxes[] = {Axis::kTp, Axis::kUlysses, Axis::kRing, Axis::kSp, Axis::kCfg};

std::vector<ParallelConfig> AllConfigs(int max_world) {
  std::vector<ParallelConfig> configs;
  for (int tp = 1; tp <= max_world; ++tp)
    for (int u = 1; u <= max_world; ++u)
      for (int r = 1; r <= max_world; ++r)
        for (int c = 1; c <= 2; ++c)
          if (tp * u * r * c <= max_world) configs.push_back({tp, u, r, c});
  return configs;
}

TEST(RankLayoutTest, OrderingIsTpFastestThenUlyssesRingCfg) {
  for (const ParallelConfig& c : AllConfigs(12)) {
    const int heads = c.tp * c.ulysses * 2;
    int expected = 0;
    // Enumerate coordinates slowest (cfg) to fastest (tp): the ranks must count up.
    for (int f = 0; f < c.cfg; ++f)
      for (int g = 0; g < c.ring; ++g)
        for (int u = 0; u < c.ulysses; ++u)
          for (int t = 0; t < c.tp; ++t, ++expected) {
            auto layout = RankLayout::Create(c, c.world(), expected, heads);
            ASSERT_TRUE(layout.ok()) << layout.status();
            EXPECT_EQ(layout->tp_rank(), t);
            EXPECT_EQ(layout->ulysses_rank(), u);
            EXPECT_EQ(layout->ring_rank(), g);
            EXPECT_EQ(layout->cfg_rank(), f);
            EXPECT_EQ(layout->sp_rank(), u + c.ulysses * g);
            EXPECT_EQ(RankLayout::RankOf(c, t, u, g, f), expected);
            EXPECT_EQ(layout->heads_per_rank(), 2);
          }
    EXPECT_EQ(expected, c.world());
  }
}

TEST(RankLayoutTest, ExampleLayout) {
  // tp 2 × ulysses 2 × ring 1 × cfg 2 = 8: rank 5 = tp 1, ulysses 0, cfg 1.
  const ParallelConfig c{/*tp=*/2, /*ulysses=*/2, /*ring=*/1, /*cfg=*/2};
  auto layout = RankLayout::Create(c, 8, 5, 8);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->tp_rank(), 1);
  EXPECT_EQ(layout->ulysses_rank(), 0);
  EXPECT_EQ(layout->cfg_rank(), 1);
  EXPECT_THAT(layout->Group(Axis::kTp), ElementsAre(4, 5));
  EXPECT_THAT(layout->Group(Axis::kUlysses), ElementsAre(5, 7));
  EXPECT_THAT(layout->Group(Axis::kRing), ElementsAre(5));
  EXPECT_THAT(layout->Group(Axis::kSp), ElementsAre(5, 7));
  EXPECT_THAT(layout->Group(Axis::kCfg), ElementsAre(1, 5));
  EXPECT_EQ(layout->heads_per_rank(), 2);

  // Ulysses 2 × ring 2: the sp group orders by sp_rank = ulysses_rank + 2 · ring_rank.
  auto sp = RankLayout::Create({1, 2, 2, 1}, 4, 2, 4);
  ASSERT_TRUE(sp.ok());
  EXPECT_EQ(sp->sp_rank(), 2);
  EXPECT_THAT(sp->Group(Axis::kSp), ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(sp->Group(Axis::kUlysses), ElementsAre(2, 3));
  EXPECT_THAT(sp->Group(Axis::kRing), ElementsAre(0, 2));
}

TEST(RankLayoutTest, GroupsPartitionTheWorldAndAgree) {
  for (const ParallelConfig& c : AllConfigs(12)) {
    const int heads = c.tp * c.ulysses;
    for (Axis axis : kAxes) {
      const auto groups = RankLayout::AllGroups(c, axis);
      const int degree = RankLayout::Degree(c, axis);
      ASSERT_EQ(static_cast<int>(groups.size()), c.world() / degree) << AxisName(axis);
      std::vector<int> seen;
      for (const auto& g : groups) {
        ASSERT_EQ(static_cast<int>(g.size()), degree);
        seen.insert(seen.end(), g.begin(), g.end());
        // Every member reports this same group, and its position is its coordinate.
        for (size_t i = 0; i < g.size(); ++i) {
          auto layout = RankLayout::Create(c, c.world(), g[i], heads);
          ASSERT_TRUE(layout.ok());
          EXPECT_EQ(layout->Group(axis), g) << c.ToString() << " " << AxisName(axis);
          EXPECT_EQ(layout->Coordinate(axis), static_cast<int>(i));
        }
      }
      // Ordered by smallest member, and covering every rank exactly once.
      for (size_t i = 1; i < groups.size(); ++i) EXPECT_LT(groups[i - 1][0], groups[i][0]);
      std::sort(seen.begin(), seen.end());
      for (int r = 0; r < c.world(); ++r) ASSERT_EQ(seen[r], r) << c.ToString();
    }
    // Two ranks in the same tp group share every other coordinate, etc.: the tp, sp and cfg
    // groups of a rank intersect only in the rank itself.
    for (int r = 0; r < c.world(); ++r) {
      auto layout = RankLayout::Create(c, c.world(), r, heads);
      ASSERT_TRUE(layout.ok());
      const std::vector<int> tp_group = layout->Group(Axis::kTp);
      const std::set<int> tp(tp_group.begin(), tp_group.end());
      for (int other : layout->Group(Axis::kSp)) EXPECT_EQ(tp.count(other), other == r ? 1u : 0u);
      for (int other : layout->Group(Axis::kCfg)) EXPECT_EQ(tp.count(other), other == r ? 1u : 0u);
    }
  }
}

TEST(RankLayoutTest, Errors) {
  auto mismatch = RankLayout::Create({1, 2, 1, 2}, 6, 0, 8);
  ASSERT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(mismatch.status().message(), "world size 6 != tp 1 × ulysses 2 × ring 1 × cfg 2 = 4");

  auto degree = RankLayout::Create({1, 0, 1, 1}, 0, 0, 8);
  ASSERT_EQ(degree.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(degree.status().message(), "parallel degree ulysses = 0 must be >= 1");

  auto heads = RankLayout::Create({2, 3, 1, 1}, 6, 0, 8);
  ASSERT_EQ(heads.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(heads.status().message(), "num_heads 8 not divisible by ulysses 3 × tp 2 = 6");

  auto rank = RankLayout::Create({2, 1, 1, 1}, 2, 2, 8);
  ASSERT_EQ(rank.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rank.status().message(), "rank 2 out of range [0, 2)");
  EXPECT_THAT(RankLayout::Create({1, 1, 1, 1}, 1, -1, 8).status().message(),
              HasSubstr("rank -1 out of range"));
  EXPECT_THAT(RankLayout::Create({1, 1, 1, 1}, 1, 0, -1).status().message(),
              HasSubstr("num_heads -1 must be >= 1"));
  // num_heads 0: the model splits its heads itself, any ulysses × tp.
  auto unchecked = RankLayout::Create({2, 3, 1, 1}, 6, 5, 0);
  ASSERT_TRUE(unchecked.ok()) << unchecked.status();
  EXPECT_EQ(unchecked->heads_per_rank(), 0);

  // Ring parallelism does not split heads.
  EXPECT_TRUE(RankLayout::Create({1, 1, 3, 1}, 3, 2, 4).ok());
}

}  // namespace
}  // namespace diffmesh::models::parallel
