// Ulysses attention over Gloo ranks (threads) against single-process attention.
#include "models/parallel/ulysses.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/core/ops.h"
#include "models/parallel/test_ranks.h"

namespace diffmesh::models::parallel {
namespace {

using ::testing::HasSubstr;
using testing::RunGlooRanks;

at::Tensor Randn(at::IntArrayRef shape, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::kFloat);
}

struct Case {
  int ranks;
  int heads;
  int kv_heads;
  int shard;  // tokens per rank
};

class UlyssesTest : public ::testing::TestWithParam<Case> {};

TEST_P(UlyssesTest, MatchesSingleRankAttention) {
  const Case c = GetParam();
  const int64_t b = 2, d = 16, s = int64_t{c.ranks} * c.shard;
  // Laid out [B, S, H, D] and transposed, as the DiT hands them over (non-contiguous).
  const at::Tensor q = Randn({b, s, c.heads, d}, 1).transpose(1, 2);
  const at::Tensor k = Randn({b, s, c.kv_heads, d}, 2).transpose(1, 2);
  const at::Tensor v = Randn({b, s, c.kv_heads, d}, 3).transpose(1, 2);
  const at::Tensor reference = models::Attention(q, k, v);  // [B, H, S, D]

  RunGlooRanks(c.ranks, [&](Communicator& comm) {
    const int r = comm.rank();
    auto qs = ShardSequence(q, 2, r, c.ranks);
    auto ks = ShardSequence(k, 2, r, c.ranks);
    auto vs = ShardSequence(v, 2, r, c.ranks);
    ASSERT_TRUE(qs.ok() && ks.ok() && vs.ok());
    UlyssesOptions options;
    options.verify_shapes = true;
    auto out = UlyssesAttention(comm, *qs, *ks, *vs, options);
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_EQ(out->sizes(), qs->sizes());
    const double err = RelativeError(*out, reference.narrow(2, r * c.shard, c.shard));
    EXPECT_LE(err, 1e-5) << "rank " << r;

    // The AttentionFn form, and the full output reassembled.
    LocalAttentionFn fn = MakeUlyssesAttentionFn(comm);
    auto full = GatherSequence(comm, fn(*qs, *ks, *vs), 2);
    ASSERT_TRUE(full.ok()) << full.status();
    const double full_err = RelativeError(*full, reference);
    EXPECT_LE(full_err, 1e-5);
    if (r == 0) {
      std::printf("U=%d heads=%d kv_heads=%d S=%lld: rel err shard %.3g, full %.3g\n", c.ranks,
                  c.heads, c.kv_heads, static_cast<long long>(s), err, full_err);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Groups, UlyssesTest,
                         ::testing::Values(Case{2, 4, 4, 7}, Case{4, 8, 8, 5},
                                           Case{4, 8, 4, 3}, Case{3, 6, 6, 4}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           const Case& c = info.param;
                           return "U" + std::to_string(c.ranks) + "H" + std::to_string(c.heads) +
                                  "Kv" + std::to_string(c.kv_heads);
                         });

TEST(UlyssesContractTest, SequenceMustDivide) {
  const at::Tensor x = at::zeros({1, 4, 10, 8});
  auto shard = ShardSequence(x, 2, 0, 4);
  ASSERT_EQ(shard.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(shard.status().message()),
              HasSubstr("sequence length 10 (dim 2 of [1, 4, 10, 8]) not divisible by 4"));
  auto ok = ShardSequence(x, -2, 1, 5);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->sizes(), at::IntArrayRef({1, 4, 2, 8}));
}

TEST(UlyssesContractTest, ErrorsReachEveryRank) {
  RunGlooRanks(2, [](Communicator& comm) {
    // Heads not divisible by the group: local check, no communication.
    const at::Tensor odd = at::randn({1, 3, 4, 8});
    auto heads = UlyssesAttention(comm, odd, odd, odd);
    EXPECT_THAT(std::string(heads.status().message()),
                HasSubstr("3 query / 3 key heads not divisible by group size 2"));
    // Unequal shards (5 and 4 tokens): with verify_shapes every rank reports it.
    const at::Tensor x = at::randn({1, 4, comm.rank() == 0 ? 5 : 4, 8});
    UlyssesOptions options;
    options.verify_shapes = true;
    auto uneven = UlyssesAttention(comm, x, x, x, options);
    EXPECT_EQ(uneven.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(uneven.status().message()), HasSubstr("shards must be equal"));
    // The AttentionFn form throws.
    LocalAttentionFn fn = MakeUlyssesAttentionFn(comm);
    EXPECT_THROW(fn(odd, odd, odd), c10::Error);
  });
}

}  // namespace
}  // namespace diffmesh::models::parallel
