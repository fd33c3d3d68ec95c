// Multi-rank tests of the Gloo communicator: ranks are threads of this process, each with its own
// communicator. Inputs are fresh random nonzero integer-valued floats (exact sums), generated
// per (seed, rank) so every rank can recompute the single-process result.
#include "models/parallel/comm.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/parallel/gloo_comm.h"
#include "models/parallel/groups.h"
#include "models/parallel/layout.h"
#include "models/parallel/test_ranks.h"

namespace diffmesh::models::parallel {
namespace {

using ::testing::HasSubstr;
using testing::RunGlooRanks;

uint64_t Seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("DIFFMESH_TEST_SEED");
    const uint64_t s = env != nullptr ? std::strtoull(env, nullptr, 10) : std::random_device{}();
    std::printf("DIFFMESH_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// Nonzero integers in ±[1, 63] as floats; a different stream for every (rank, salt).
at::Tensor RankData(int rank, at::IntArrayRef shape, int salt = 0,
                    at::ScalarType dtype = at::kFloat) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(Seed() * 7919 + rank * 131 + salt);
  at::Tensor magnitude = at::randint(1, 64, shape, gen, at::kFloat);
  at::Tensor sign = at::randint(0, 2, shape, gen, at::kFloat) * 2 - 1;
  return (magnitude * sign).to(dtype);
}

void ExpectEqual(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  EXPECT_TRUE(at::equal(actual, expected.to(actual.scalar_type())))
      << what << "\nactual\n" << actual << "\nexpected\n" << expected;
}

class CommTest : public ::testing::TestWithParam<int> {
 protected:
  int world() const { return GetParam(); }
};

TEST_P(CommTest, AllReduceContiguousAndViews) {
  const int w = world();
  RunGlooRanks(w, [&](Communicator& comm) {
    const int r = comm.rank();
    EXPECT_EQ(comm.size(), w);
    EXPECT_STREQ(comm.backend(), "gloo");
    std::vector<at::Tensor> all;
    for (int i = 0; i < w; ++i) all.push_back(RankData(i, {6, 5}));
    const at::Tensor sum = at::stack(all).sum(0);
    const at::Tensor max = std::get<0>(at::stack(all).max(0));
    const at::Tensor min = std::get<0>(at::stack(all).min(0));

    at::Tensor contiguous = all[r].clone();
    ASSERT_TRUE(comm.AllReduce(contiguous).ok());
    ExpectEqual(contiguous, sum, "sum");

    // Transposed view: the result must land in the caller's tensor and its base.
    at::Tensor base = all[r].t().contiguous();  // [5, 6]
    at::Tensor transposed = base.t();            // [6, 5] view, not contiguous
    ASSERT_FALSE(transposed.is_contiguous());
    ASSERT_TRUE(comm.AllReduce(transposed, ReduceOp::kMax).ok());
    ExpectEqual(transposed, max, "max on transposed view");
    ExpectEqual(base, max.t(), "max written through to the base");

    // Sliced columns of a wider tensor: only the slice changes.
    at::Tensor wide = RankData(r, {6, 9}, /*salt=*/1);
    const at::Tensor before = wide.clone();
    at::Tensor slice = wide.narrow(1, 2, 5);
    slice.copy_(all[r]);
    ASSERT_FALSE(slice.is_contiguous());
    ASSERT_TRUE(comm.AllReduce(slice, ReduceOp::kMin).ok());
    ExpectEqual(wide.narrow(1, 2, 5), min, "min written through a column slice");
    ExpectEqual(wide.narrow(1, 0, 2), before.narrow(1, 0, 2), "columns left of the slice");
    ExpectEqual(wide.narrow(1, 7, 2), before.narrow(1, 7, 2), "columns right of the slice");

    // Strided rows, average.
    at::Tensor tall = at::zeros({12, 5});
    at::Tensor rows = tall.slice(0, 0, 12, 2);
    rows.copy_(all[r]);
    ASSERT_TRUE(comm.AllReduce(rows, ReduceOp::kAvg).ok());
    EXPECT_TRUE(at::allclose(tall.slice(0, 0, 12, 2), sum / w, 1e-6, 1e-6));
    EXPECT_TRUE(at::equal(tall.slice(0, 1, 12, 2), at::zeros({6, 5})));
  });
}

TEST_P(CommTest, AllReduceDtypes) {
  const int w = world();
  RunGlooRanks(w, [&](Communicator& comm) {
    const int r = comm.rank();
    for (at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kDouble, at::kLong, at::kInt}) {
      std::vector<at::Tensor> all;
      for (int i = 0; i < w; ++i) all.push_back(RankData(i, {3, 4}, 2, dtype));
      at::Tensor mine = all[r].clone().t();  // non-contiguous too
      ASSERT_TRUE(comm.AllReduce(mine).ok()) << c10::toString(dtype);
      EXPECT_EQ(mine.scalar_type(), dtype);
      ExpectEqual(mine, at::stack(all).sum(0).t(), c10::toString(dtype));
    }
    // bool: max is "any".
    at::Tensor flag = at::full({2}, r == w - 1, at::kBool);
    ASSERT_TRUE(comm.AllReduce(flag, ReduceOp::kMax).ok());
    EXPECT_TRUE(flag.all().item<bool>());
  });
}

TEST_P(CommTest, AllGather) {
  const int w = world();
  RunGlooRanks(w, [&](Communicator& comm) {
    const int r = comm.rank();
    std::vector<at::Tensor> all;
    for (int i = 0; i < w; ++i) all.push_back(RankData(i, {3, 4}));
    const at::Tensor expected = at::cat(all);  // [3w, 4]

    // Transposed input.
    at::Tensor input = all[r].t().contiguous().t();
    ASSERT_FALSE(input.is_contiguous());
    auto gathered = comm.AllGather(input);
    ASSERT_TRUE(gathered.ok()) << gathered.status();
    ExpectEqual(*gathered, expected, "AllGather of a transposed input");

    // Sliced input, non-contiguous output written through to its base.
    at::Tensor wide = at::cat({all[r], all[r]}, 1);  // [3, 8]
    at::Tensor sliced = wide.narrow(1, 4, 4);
    at::Tensor out_base = at::zeros({4, 3 * w});
    at::Tensor out = out_base.t();  // [3w, 4] view
    ASSERT_TRUE(comm.AllGatherInto(out, sliced).ok());
    ExpectEqual(out_base, expected.t(), "AllGatherInto a transposed output");

    // In-place form: the input is this rank's slot of the output.
    at::Tensor buffer = at::zeros({3 * w, 4});
    buffer.narrow(0, 3 * r, 3).copy_(all[r]);
    at::Tensor slot = buffer.narrow(0, 3 * r, 3);
    ASSERT_TRUE(comm.AllGatherInto(buffer, slot).ok());
    ExpectEqual(buffer, expected, "AllGatherInto with the input aliasing the output");

    auto list = comm.AllGatherList(all[r].t());
    ASSERT_TRUE(list.ok());
    ASSERT_EQ(static_cast<int>(list->size()), w);
    for (int i = 0; i < w; ++i) ExpectEqual((*list)[i], all[i].t(), "AllGatherList");

    // bfloat16 moves as bytes.
    auto bf = comm.AllGather(all[r].to(at::kBFloat16));
    ASSERT_TRUE(bf.ok());
    ExpectEqual(*bf, expected.to(at::kBFloat16), "AllGather bfloat16");
  });
}

TEST_P(CommTest, AllToAllEqualSplits) {
  const int w = world();
  RunGlooRanks(w, [&](Communicator& comm) {
    const int r = comm.rank();
    std::vector<at::Tensor> all;
    for (int i = 0; i < w; ++i) all.push_back(RankData(i, {2 * w, 3}));
    // Rank r receives chunk r (rows [2r, 2r+2)) of every rank, in rank order.
    std::vector<at::Tensor> chunks;
    for (int i = 0; i < w; ++i) chunks.push_back(all[i].narrow(0, 2 * r, 2));
    const at::Tensor expected = at::cat(chunks);

    at::Tensor input = all[r].t().contiguous().t();  // transposed view
    ASSERT_FALSE(input.is_contiguous());
    auto out = comm.AllToAllSingle(input);
    ASSERT_TRUE(out.ok()) << out.status();
    ExpectEqual(*out, expected, "AllToAllSingle of a transposed input");

    // Strided input rows, output into a transposed view.
    at::Tensor doubled = at::zeros({4 * w, 3});
    doubled.slice(0, 0, 4 * w, 2).copy_(all[r]);
    at::Tensor out_base = at::zeros({3, 2 * w});
    at::Tensor out_view = out_base.t();
    ASSERT_TRUE(comm.AllToAllSingleInto(out_view, doubled.slice(0, 0, 4 * w, 2)).ok());
    ExpectEqual(out_base, expected.t(), "AllToAllSingleInto a transposed output");
  });
}

TEST_P(CommTest, AllToAllUnevenSplits) {
  const int w = world();
  RunGlooRanks(w, [&](Communicator& comm) {
    const int r = comm.rank();
    // Rank i sends (i + j) % 3 rows to rank j (some zero).
    auto rows = [](int from, int to) { return static_cast<int64_t>((from + to) % 3); };
    std::vector<at::Tensor> all;
    for (int i = 0; i < w; ++i) {
      int64_t total = 0;
      for (int j = 0; j < w; ++j) total += rows(i, j);
      all.push_back(RankData(i, {total, 2}, 3));
    }
    std::vector<int64_t> in_splits, out_splits;
    for (int j = 0; j < w; ++j) in_splits.push_back(rows(r, j));
    for (int i = 0; i < w; ++i) out_splits.push_back(rows(i, r));
    std::vector<at::Tensor> chunks;
    for (int i = 0; i < w; ++i) {
      int64_t offset = 0;
      for (int j = 0; j < r; ++j) offset += rows(i, j);
      chunks.push_back(all[i].narrow(0, offset, rows(i, r)));
    }
    const at::Tensor expected = at::cat(chunks);

    // Output splits exchanged by the communicator.
    at::Tensor input = all[r].t().contiguous().t();
    auto out = comm.AllToAllSingle(input, {}, in_splits);
    ASSERT_TRUE(out.ok()) << out.status();
    ExpectEqual(*out, expected, "AllToAllSingle with exchanged output splits");

    // Both given.
    auto out2 = comm.AllToAllSingle(input, out_splits, in_splits);
    ASSERT_TRUE(out2.ok()) << out2.status();
    ExpectEqual(*out2, expected, "AllToAllSingle with both splits");
  });
}

TEST_P(CommTest, BroadcastIntoStridedView) {
  const int w = world();
  RunGlooRanks(w, [&](Communicator& comm) {
    const int r = comm.rank();
    const int root = w - 1;
    at::Tensor base = RankData(r, {8, 3}, 4);
    const at::Tensor before = base.clone();
    at::Tensor every_other = base.slice(0, 1, 8, 2);  // rows 1, 3, 5, 7
    ASSERT_TRUE(comm.Broadcast(every_other, root).ok());
    const at::Tensor expected = RankData(root, {8, 3}, 4).slice(0, 1, 8, 2);
    ExpectEqual(base.slice(0, 1, 8, 2), expected, "broadcast rows");
    ExpectEqual(base.slice(0, 0, 8, 2), before.slice(0, 0, 8, 2), "untouched rows");

    at::Tensor transposed = RankData(r, {4, 5}, 5).t();
    ASSERT_TRUE(comm.Broadcast(transposed, 0).ok());
    ExpectEqual(transposed, RankData(0, {4, 5}, 5).t(), "broadcast transposed");
  });
}

TEST_P(CommTest, SendRecvAndRing) {
  const int w = world();
  RunGlooRanks(w, [&](Communicator& comm) {
    const int r = comm.rank();
    // Rank 0 sends a transposed tensor to everyone; each answers with a sliced one.
    if (r == 0) {
      for (int peer = 1; peer < w; ++peer) {
        ASSERT_TRUE(comm.Send(RankData(peer, {3, 4}, 6).t(), peer, /*tag=*/7).ok());
      }
      for (int peer = 1; peer < w; ++peer) {
        at::Tensor base = at::zeros({4, 6});
        at::Tensor view = base.narrow(1, 1, 4);
        ASSERT_TRUE(comm.Recv(view, peer, /*tag=*/peer).ok());
        ExpectEqual(base.narrow(1, 1, 4), RankData(peer, {4, 8}, 7).narrow(1, 2, 4), "Recv");
        EXPECT_TRUE(at::equal(base.narrow(1, 0, 1), at::zeros({4, 1})));
      }
    } else {
      at::Tensor base = at::zeros({3, 4});
      at::Tensor view = base.t();
      ASSERT_TRUE(comm.Recv(view, 0, 7).ok());
      ExpectEqual(base, RankData(r, {3, 4}, 6), "Recv into a transposed view");
      ASSERT_TRUE(comm.Send(RankData(r, {4, 8}, 7).narrow(1, 2, 4), 0, r).ok());
    }

    // Ring step: send to the successor, receive from the predecessor.
    const int next = (r + 1) % w, prev = (r + w - 1) % w;
    at::Tensor recv_base = at::zeros({5, 2});
    at::Tensor recv = recv_base.t();
    ASSERT_TRUE(comm.SendRecv(RankData(r, {5, 2}, 8).t(), next, recv, prev).ok());
    ExpectEqual(recv_base, RankData(prev, {5, 2}, 8), "SendRecv ring");
    ASSERT_TRUE(comm.Barrier().ok());
  });
}

TEST_P(CommTest, BroadcastBytes) {
  const int w = world();
  RunGlooRanks(w, [&](Communicator& comm) {
    const int r = comm.rank();
    const int root = 1 % w;
    std::string payload;
    for (int i = 0; i < 1000; ++i) payload.push_back(static_cast<char>((i * 37 + Seed()) % 256));
    payload[10] = '\0';
    std::string mine = r == root ? payload : std::string("stale value of rank ") + char('0' + r);
    ASSERT_TRUE(comm.BroadcastBytes(&mine, root).ok());
    EXPECT_EQ(mine, payload);

    std::string empty = r == 0 ? "" : "not empty";
    ASSERT_TRUE(comm.BroadcastBytes(&empty, 0).ok());
    EXPECT_EQ(empty, "");
  });
}

TEST_P(CommTest, SplitGroupsFromLayout) {
  const int w = world();
  // w = 4: tp 2 × ulysses 2; w = 3: ulysses 3; w = 2: cfg 2.
  const ParallelConfig config = w == 4 ? ParallelConfig{2, 2, 1, 1}
                                : w == 3 ? ParallelConfig{1, 3, 1, 1}
                                         : ParallelConfig{1, 1, 1, 2};
  RunGlooRanks(w, [&](Communicator& comm) {
    auto layout = RankLayout::Create(config, w, comm.rank(), 12);
    ASSERT_TRUE(layout.ok());
    auto groups = CreateParallelGroups(comm, *layout);
    ASSERT_TRUE(groups.ok()) << groups.status();
    for (Axis axis : {Axis::kTp, Axis::kUlysses, Axis::kRing, Axis::kSp, Axis::kCfg}) {
      Communicator& group = groups->Get(axis);
      const std::vector<int> members = layout->Group(axis);
      ASSERT_EQ(group.size(), static_cast<int>(members.size())) << AxisName(axis);
      EXPECT_EQ(group.rank(), layout->Coordinate(axis)) << AxisName(axis);
      // Sum of the members' data, on a transposed view.
      at::Tensor mine = RankData(comm.rank(), {2, 3}, 9).t();
      ASSERT_TRUE(group.AllReduce(mine).ok());
      at::Tensor expected = at::zeros({3, 2});
      for (int m : members) expected += RankData(m, {2, 3}, 9).t();
      ExpectEqual(mine, expected, AxisName(axis));
    }
    // A reversed list: the position in the list is the new rank.
    std::vector<int> reversed;
    for (int i = w - 1; i >= 0; --i) reversed.push_back(i);
    auto split = comm.Split(reversed);
    ASSERT_TRUE(split.ok()) << split.status();
    ASSERT_NE(*split, nullptr);
    EXPECT_EQ((*split)->rank(), w - 1 - comm.rank());
    auto gathered = (*split)->AllGather(at::full({1}, comm.rank(), at::kLong));
    ASSERT_TRUE(gathered.ok());
    for (int i = 0; i < w; ++i) EXPECT_EQ((*gathered)[i].item<int64_t>(), w - 1 - i);
    // Non-members get nullptr; a group of one is a single-rank communicator.
    auto only_zero = comm.Split({0});
    ASSERT_TRUE(only_zero.ok());
    EXPECT_EQ(*only_zero == nullptr, comm.rank() != 0);
    if (comm.rank() == 0) {
      EXPECT_STREQ((*only_zero)->backend(), "single");
    }
  });
}

TEST_P(CommTest, InvalidArguments) {
  const int w = world();
  RunGlooRanks(w, [&](Communicator& comm) {
    at::Tensor t = at::ones({4, 2});
    at::Tensor expanded = at::ones({2}).expand({4, 2});
    EXPECT_THAT(std::string(comm.AllReduce(expanded).message()), HasSubstr("internal overlap"));
    at::Tensor ints = at::ones({2}, at::kLong);
    EXPECT_THAT(std::string(comm.AllReduce(ints, ReduceOp::kAvg).message()),
                HasSubstr("avg needs a floating dtype"));
    at::Tensor wrong = at::zeros({4, 2});
    EXPECT_THAT(std::string(comm.AllGatherInto(wrong, t).message()), HasSubstr("group size"));
    if (w > 2) {
      EXPECT_THAT(std::string(comm.AllToAllSingle(at::ones({w + 1, 2})).status().message()),
                  HasSubstr("not divisible by group size"));
    }
    EXPECT_THAT(std::string(comm.AllToAllSingle(t, {}, {1}).status().message()),
                HasSubstr("entries, group size is"));
    EXPECT_THAT(std::string(comm.Broadcast(t, w).message()), HasSubstr("out of range"));
    EXPECT_THAT(std::string(comm.Send(t, comm.rank()).message()), HasSubstr("itself"));
    EXPECT_THAT(std::string(comm.Split({0, 0}).status().message()), HasSubstr("listed twice"));
    EXPECT_EQ(comm.AllReduce(t).code(), absl::StatusCode::kOk);  // still usable
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, CommTest, ::testing::Values(2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "World" + std::to_string(info.param);
                         });

TEST(SingleRankTest, IdentityCollectives) {
  auto comm = CreateSingleRankCommunicator();
  EXPECT_EQ(comm->size(), 1);
  at::Tensor x = RankData(0, {3, 4});
  at::Tensor view = x.clone().t();
  ASSERT_TRUE(comm->AllReduce(view).ok());
  ExpectEqual(view, x.t(), "AllReduce");
  auto gathered = comm->AllGather(x.t());
  ASSERT_TRUE(gathered.ok());
  ExpectEqual(*gathered, x.t(), "AllGather");
  auto a2a = comm->AllToAllSingle(x.t());
  ASSERT_TRUE(a2a.ok());
  ExpectEqual(*a2a, x.t(), "AllToAllSingle");
  std::string bytes = "request";
  ASSERT_TRUE(comm->BroadcastBytes(&bytes, 0).ok());
  EXPECT_EQ(bytes, "request");
  at::Tensor recv = at::zeros({4, 3});
  ASSERT_TRUE(comm->SendRecv(x.t(), 0, recv, 0).ok());
  ExpectEqual(recv, x.t(), "SendRecv to itself");
  EXPECT_FALSE(comm->Send(x, 0).ok());
}

TEST(GlooRendezvousTest, BadOptions) {
  RendezvousOptions options;
  options.world_size = 2;
  options.rank = 2;
  EXPECT_THAT(std::string(CreateGlooCommunicator(options).status().message()),
              HasSubstr("rank 2 out of range [0, 2)"));
  options.rank = 1;
  options.master_port = testing::FreeLoopbackPort();
  options.timeout = std::chrono::milliseconds(300);
  // Nobody serves the store: the client gives up after the timeout.
  auto missing = CreateGlooCommunicator(options);
  EXPECT_FALSE(missing.ok());
  std::printf("no server: %s\n", missing.status().ToString().c_str());
}

// A rank that never joins the collective: the other's wait ends at its WaitLimit's deadline, or
// when the limit is aborted from another thread, not at Gloo's timeout; split groups share it.
TEST(WaitLimitTest, DeadlineAndAbortEndABlockedCollective) {
  for (bool abort : {false, true}) {
    RunGlooRanks(2, [&](Communicator& comm) {
      if (comm.rank() == 1) {  // stays away, then leaves (its disconnect would end the wait too)
        absl::SleepFor(absl::Seconds(2));
        return;
      }
      auto limit = std::make_shared<WaitLimit>();
      comm.set_wait_limit(limit);
      auto sub = comm.Split({0});
      ASSERT_TRUE(sub.ok()) << sub.status();
      EXPECT_EQ((*sub)->wait_limit(), limit);
      std::thread aborter;
      const absl::Time start = absl::Now();
      if (abort) {
        aborter = std::thread([limit] {
          absl::SleepFor(absl::Milliseconds(300));
          limit->Abort(absl::UnavailableError("rank 1 is lost"));
        });
      } else {
        limit->SetDeadline(start + absl::Milliseconds(300));
      }
      at::Tensor t = at::ones({4});
      absl::Status s = comm.AllReduce(t);
      const absl::Duration took = absl::Now() - start;
      if (aborter.joinable()) aborter.join();
      EXPECT_EQ(s.code(), abort ? absl::StatusCode::kUnavailable : absl::StatusCode::kDeadlineExceeded) << s;
      if (abort) {
        EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("rank 1 is lost"));
      }
      EXPECT_GE(took, absl::Milliseconds(300));
      EXPECT_LT(took, absl::Seconds(1)) << s;
      EXPECT_EQ(limit->Check().code(), s.code());
    });
  }
}

// Gloo's point-to-point waits (ring attention's steps) cannot be polled: an Abort() of the limit
// (the membership's lost or hung peer) wakes them at once, long before the deadline, both halves
// of a SendRecv whose peer never comes; a wait started after the abort ends without waiting.
TEST(WaitLimitTest, AbortEndsABlockedPointToPointWait) {
  RunGlooRanks(2, [&](Communicator& comm) {
    if (comm.rank() == 1) {  // a hung peer: connected, silent; its exit would end the waits
      absl::SleepFor(absl::Seconds(4));
      return;
    }
    auto limit = std::make_shared<WaitLimit>();
    comm.set_wait_limit(limit);
    limit->SetDeadline(absl::Now() + absl::Seconds(60));
    // 16 MiB each way: more than the sockets' buffers take, so the send waits too.
    at::Tensor send = at::ones({4 << 20});
    at::Tensor recv = at::empty({4 << 20});
    const absl::Time start = absl::Now();
    std::thread aborter([limit] {
      absl::SleepFor(absl::Milliseconds(300));
      limit->Abort(absl::UnavailableError("rank 1 is lost"));
    });
    const absl::Status s = comm.SendRecv(send, 1, recv, 1);
    const absl::Duration took = absl::Now() - start;
    aborter.join();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("rank 1 is lost"));
    EXPECT_GE(took, absl::Milliseconds(300));
    EXPECT_LT(took, absl::Seconds(2)) << s;

    const absl::Time again = absl::Now();
    const absl::Status r = comm.Recv(recv, 1, /*tag=*/1);
    EXPECT_EQ(r.code(), absl::StatusCode::kUnavailable) << r;
    EXPECT_LT(absl::Now() - again, absl::Seconds(1));
  });
}

// The listener of a limit runs once per registration: at Abort() while registered, at once when
// registered after it, never once its registration is gone.
TEST(WaitLimitTest, OnAbortWakesRegisteredWaitersOnce) {
  WaitLimit limit;
  int early = 0, gone = 0, late = 0;
  auto registered = limit.OnAbort([&] { ++early; });
  limit.OnAbort([&] { ++gone; }).reset();
  EXPECT_EQ(early, 0);
  limit.Abort(absl::UnavailableError("lost"));
  limit.Abort(absl::UnavailableError("lost again"));
  EXPECT_EQ(early, 1);
  EXPECT_EQ(gone, 0);
  auto after = limit.OnAbort([&] { ++late; });
  EXPECT_EQ(late, 1);
  registered.reset();
  after.reset();
  EXPECT_EQ(limit.Check().message(), "lost");
}

// A waiting rank polls its collective in kWaitPollInterval slices; a collective that completes
// just as a slice times out is a success, not a timeout. Rank 0 joins about one slice late, so
// the other ranks' collectives complete close to the end of their first slice.
TEST(WaitLimitTest, CollectivesEndingAtAPollSliceSucceed) {
  RunGlooRanks(4, [&](Communicator& comm) {
    auto limit = std::make_shared<WaitLimit>();
    comm.set_wait_limit(limit);
    std::mt19937 rng(static_cast<uint32_t>(Seed()));
    const int64_t slice_us = absl::ToInt64Microseconds(kWaitPollInterval);
    std::uniform_int_distribution<int64_t> delay_us(slice_us - 1500, slice_us + 1500);
    int failures = 0;
    for (int i = 0; i < 100; ++i) {
      const int64_t delay = delay_us(rng);  // every rank draws, so the streams stay in step
      if (comm.rank() == 0) absl::SleepFor(absl::Microseconds(delay));
      at::Tensor t = at::ones({4});
      absl::Status s = comm.AllReduce(t);
      if (!s.ok() && ++failures <= 3) {
        ADD_FAILURE() << "rank " << comm.rank() << " round " << i << ": " << s;
      }
      if (s.ok()) {
        EXPECT_EQ(t[0].item<float>(), 4.0f);
      }
    }
  });
}

}  // namespace
}  // namespace diffmesh::models::parallel
