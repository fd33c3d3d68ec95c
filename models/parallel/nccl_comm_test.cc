// NCCL communicator on the GPUs of this host: one rank per GPU, ranks as threads. With one GPU
// the world is a single rank (the NCCL calls still run with nranks = 1); the multi-rank cases
// need two or more GPUs.
#include "models/parallel/nccl_comm.h"

#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/parallel/groups.h"
#include "models/parallel/layout.h"
#include "models/parallel/test_ranks.h"
#include "models/parallel/ulysses.h"
#include "models/core/ops.h"

namespace diffmesh::models::parallel {
namespace {

using ::testing::HasSubstr;

int Gpus() { return static_cast<int>(c10::cuda::device_count()); }

// body(comm) on `world` threads, rank r on GPU r.
void RunNcclRanks(int world, const std::function<void(NcclCommunicator& comm)>& body) {
  const int port = testing::FreeLoopbackPort();
  ASSERT_GT(port, 0);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      RendezvousOptions options;
      options.world_size = world;
      options.rank = rank;
      options.master_port = port;
      options.timeout = std::chrono::seconds(60);
      NcclOptions nccl;
      nccl.device = rank;
      auto comm = NcclCommunicator::Create(options, nccl);
      ASSERT_TRUE(comm.ok()) << "rank " << rank << ": " << comm.status();
      body(**comm);
      EXPECT_TRUE((*comm)->CheckAsyncError().ok());
      EXPECT_TRUE((*comm)->Destroy().ok());
    });
  }
  for (std::thread& t : threads) t.join();
}

// Nonzero integer-valued floats, the same on every rank for a given (rank, salt).
at::Tensor RankData(int rank, at::IntArrayRef shape, int salt, const at::Device& device) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  at::Tensor x = at::arange(n, at::kFloat).reshape(shape);
  return ((x * 7 + rank * 13 + salt * 5).remainder(61) + 1).to(device);
}

int World() { return std::min(Gpus(), 4); }

TEST(NcclCommTest, Collectives) {
  if (Gpus() < 1) GTEST_SKIP() << "no GPU";
  const int w = World();
  std::printf("NCCL collectives over %d GPU rank(s)\n", w);
  RunNcclRanks(w, [&](NcclCommunicator& comm) {
    const int r = comm.rank();
    const at::Device dev = comm.device();
    EXPECT_STREQ(comm.backend(), "nccl");
    std::vector<at::Tensor> all;
    for (int i = 0; i < w; ++i) all.push_back(RankData(i, {6, 5}, 0, dev));
    const at::Tensor sum = at::stack(all).sum(0);

    // All-reduce on a transposed view writes through to its base.
    at::Tensor base = all[r].t().contiguous();
    at::Tensor view = base.t();
    ASSERT_TRUE(comm.AllReduce(view).ok());
    EXPECT_TRUE(at::equal(base, sum.t()));
    // Column slice, average.
    at::Tensor wide = at::zeros({6, 9}, dev);
    at::Tensor slice = wide.narrow(1, 2, 5);
    slice.copy_(all[r]);
    ASSERT_TRUE(comm.AllReduce(slice, ReduceOp::kAvg).ok());
    EXPECT_TRUE(at::allclose(wide.narrow(1, 2, 5), sum / w));
    EXPECT_TRUE(at::equal(wide.narrow(1, 0, 2), at::zeros({6, 2}, dev)));
    // bfloat16 natively, bool through int32.
    at::Tensor bf = all[r].to(at::kBFloat16).t();
    ASSERT_TRUE(comm.AllReduce(bf).ok());
    EXPECT_TRUE(at::equal(bf, sum.to(at::kBFloat16).t()));
    at::Tensor flag = at::full({3}, r == w - 1, at::TensorOptions().dtype(at::kBool).device(dev));
    ASSERT_TRUE(comm.AllReduce(flag, ReduceOp::kMax).ok());
    EXPECT_TRUE(flag.all().item<bool>());

    // All-gather from a transposed input into a transposed output.
    at::Tensor out_base = at::zeros({5, 6 * w}, dev);
    at::Tensor out = out_base.t();
    ASSERT_TRUE(comm.AllGatherInto(out, all[r].t().contiguous().t()).ok());
    EXPECT_TRUE(at::equal(out, at::cat(all)));

    // Uneven all-to-all: rank i sends (i + j) % 3 rows to rank j.
    auto rows = [](int from, int to) { return static_cast<int64_t>((from + to) % 3); };
    std::vector<int64_t> in_splits;
    int64_t total = 0;
    for (int j = 0; j < w; ++j) in_splits.push_back(rows(r, j)), total += rows(r, j);
    std::vector<at::Tensor> parts;
    for (int i = 0; i < w; ++i) {
      int64_t n = 0, offset = 0;
      for (int j = 0; j < w; ++j) n += rows(i, j);
      for (int j = 0; j < r; ++j) offset += rows(i, j);
      parts.push_back(RankData(i, {n, 3}, 1, dev).narrow(0, offset, rows(i, r)));
    }
    auto a2a = comm.AllToAllSingle(RankData(r, {total, 3}, 1, dev).t().contiguous().t(), {},
                                   in_splits);
    ASSERT_TRUE(a2a.ok()) << a2a.status();
    EXPECT_TRUE(at::equal(*a2a, at::cat(parts)));

    // Broadcast into strided rows.
    at::Tensor tall = at::zeros({8, 3}, dev);
    at::Tensor odd_rows = tall.slice(0, 1, 8, 2);
    if (r == w - 1) odd_rows.copy_(RankData(w - 1, {4, 3}, 2, dev));
    ASSERT_TRUE(comm.Broadcast(odd_rows, w - 1).ok());
    EXPECT_TRUE(at::equal(tall.slice(0, 1, 8, 2), RankData(w - 1, {4, 3}, 2, dev)));
    EXPECT_TRUE(at::equal(tall.slice(0, 0, 8, 2), at::zeros({4, 3}, dev)));

    // Ring step.
    const int next = (r + 1) % w, prev = (r + w - 1) % w;
    at::Tensor recv_base = at::zeros({5, 2}, dev);
    at::Tensor recv = recv_base.t();
    ASSERT_TRUE(comm.SendRecv(RankData(r, {5, 2}, 3, dev).t(), next, recv, prev).ok());
    EXPECT_TRUE(at::equal(recv_base, RankData(prev, {5, 2}, 3, dev)));

    std::string bytes = r == 0 ? std::string("request\0with nul", 16) : "stale";
    ASSERT_TRUE(comm.BroadcastBytes(&bytes, 0).ok());
    EXPECT_EQ(bytes, std::string("request\0with nul", 16));
    ASSERT_TRUE(comm.Barrier().ok());

    // Wrong device.
    at::Tensor cpu = at::ones({2});
    EXPECT_THAT(std::string(comm.AllReduce(cpu).message()), HasSubstr("works on cuda"));
  });
}

TEST(NcclCommTest, SplitAndUlysses) {
  if (Gpus() < 2) GTEST_SKIP() << "needs 2 GPUs, have " << Gpus();
  const int w = World();
  RunNcclRanks(w, [&](NcclCommunicator& comm) {
    const ParallelConfig config{1, w, 1, 1};
    auto layout = RankLayout::Create(config, w, comm.rank(), 4 * w);
    ASSERT_TRUE(layout.ok());
    auto groups = CreateParallelGroups(comm, *layout);
    ASSERT_TRUE(groups.ok()) << groups.status();
    Communicator& ulysses = groups->Get(Axis::kUlysses);
    ASSERT_EQ(ulysses.size(), w);
    const at::Device dev = comm.device();
    const int64_t s = 6 * w;
    at::Tensor q = at::sin(at::arange(2 * 4 * w * s * 16, at::kFloat)).reshape({2, 4 * w, s, 16});
    at::Tensor k = at::cos(q * 3), v = at::sin(q * 5);
    const at::Tensor reference = models::Attention(q, k, v);
    auto shard = [&](const at::Tensor& x) { return *ShardSequence(x.to(dev), 2, comm.rank(), w); };
    auto out = UlyssesAttention(ulysses, shard(q), shard(k), shard(v));
    ASSERT_TRUE(out.ok()) << out.status();
    const double err = RelativeError(out->cpu(), reference.narrow(2, comm.rank() * 6, 6));
    EXPECT_LE(err, 1e-5);
    if (comm.rank() == 0) std::printf("NCCL Ulysses U=%d rel err %.3g\n", w, err);
  });
}

TEST(NcclCommTest, AbortMakesItUnusable) {
  if (Gpus() < 1) GTEST_SKIP() << "no GPU";
  RendezvousOptions options;
  options.master_port = testing::FreeLoopbackPort();
  auto comm = NcclCommunicator::Create(options);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_TRUE((*comm)->CheckAsyncError().ok());
  ASSERT_TRUE((*comm)->Abort().ok());
  EXPECT_FALSE((*comm)->usable());
  at::Tensor t = at::ones({2}, at::Device(at::kCUDA, 0));
  EXPECT_EQ((*comm)->AllReduce(t).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*comm)->CheckAsyncError().code(), absl::StatusCode::kFailedPrecondition);
}

// One GPU is enough to see the limits end waits that NCCL itself would not end.
//
// A communicator of two whose second rank never comes: the initialization (NCCL's bootstrap
// waits for every rank) is aborted at the rendezvous timeout, with a status saying so.
TEST(NcclCommTest, InitializationEndsWhenAPeerNeverJoins) {
  if (Gpus() < 1) GTEST_SKIP() << "no GPU";
  RendezvousOptions options;
  options.world_size = 2;
  options.rank = 0;
  options.timeout = std::chrono::seconds(2);
  const absl::Time start = absl::Now();
  auto comm = NcclCommunicator::CreateOnStore(c10::make_intrusive<c10d::HashStore>(), "alone",
                                              options);
  const absl::Duration took = absl::Now() - start;
  std::printf("init without the peer ended after %.2f s: %s\n", absl::ToDoubleSeconds(took),
              comm.status().ToString().c_str());
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("did not all join"));
  EXPECT_GE(took, absl::Seconds(2));
  EXPECT_LT(took, absl::Seconds(10));
}

// A stream that does not move (here a host function that waits for a gate; with several GPUs, a
// peer that never joins): the watchdog, not the caller, notices that the operation outlived its
// wait limit and aborts the communicator; every later call returns the limit's status.
// ncclCommAbort waits for the device's work, so here it returns when the gate opens (seen on an
// H100: 4.0 s); with a hung peer the abort itself ends NCCL's spinning kernels.
struct StreamGate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu);
      open = true;
    }
    cv.notify_all();
  }
};

void CUDART_CB WaitAtGate(void* gate) {
  auto* g = static_cast<StreamGate*>(gate);
  std::unique_lock<std::mutex> lock(g->mu);
  g->cv.wait(lock, [g] { return g->open; });
}

TEST(NcclCommTest, TheWatchdogAbortsAnOperationThatOutlivesItsWaitLimit) {
  if (Gpus() < 1) GTEST_SKIP() << "no GPU";
  RendezvousOptions options;
  options.master_port = testing::FreeLoopbackPort();
  auto comm = NcclCommunicator::Create(options);
  ASSERT_TRUE(comm.ok()) << comm.status();
  auto limit = std::make_shared<WaitLimit>();
  (*comm)->set_wait_limit(limit);
  at::Tensor t = at::ones({1024}, (*comm)->device());
  ASSERT_TRUE((*comm)->AllReduce(t).ok());
  ASSERT_TRUE((*comm)->Barrier().ok());  // healthy under the limit

  StreamGate gate;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(0).stream();
  ASSERT_EQ(cudaLaunchHostFunc(stream, WaitAtGate, &gate), cudaSuccess);
  const absl::Time start = absl::Now();
  limit->SetDeadline(start + absl::Milliseconds(500));
  ASSERT_TRUE((*comm)->AllReduce(t).ok());  // enqueued behind the gate
  // The gate opens after 4 s whatever happens, so that a test that fails still ends.
  std::thread opener([&gate] {
    absl::SleepFor(absl::Seconds(4));
    gate.Open();
  });
  while ((*comm)->usable() && absl::Now() - start < absl::Seconds(8)) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const absl::Duration took = absl::Now() - start;
  std::printf("unusable after %.2f s (limit 0.5 s, gate opens at 4 s)\n",
              absl::ToDoubleSeconds(took));
  EXPECT_FALSE((*comm)->usable());
  const absl::Status later = (*comm)->AllReduce(t);
  EXPECT_EQ(later.code(), absl::StatusCode::kDeadlineExceeded) << later;
  EXPECT_THAT(std::string(later.message()), HasSubstr("wait limit"));
  EXPECT_THAT(std::string(later.message()), HasSubstr("AllReduce"));
  opener.join();
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
}

// A peer that never joins: under a wait limit the wait ends at the limit (the watchdog aborts
// the communicator; NCCL itself would spin), with a status naming the limit, and the
// communicator is unusable afterwards. An aborted limit (the membership's lost-rank signal)
// stops the next operation at once.
TEST(NcclCommTest, AWaitLimitEndsTheWaitForAPeerThatNeverJoins) {
  if (Gpus() < 2) GTEST_SKIP() << "needs 2 GPUs";
  const int port = testing::FreeLoopbackPort();
  ASSERT_GT(port, 0);
  std::atomic<bool> rank0_done{false};
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      RendezvousOptions options;
      options.world_size = 2;
      options.rank = rank;
      options.master_port = port;
      options.timeout = std::chrono::seconds(60);
      NcclOptions nccl;
      nccl.device = rank;
      auto comm = NcclCommunicator::Create(options, nccl);
      ASSERT_TRUE(comm.ok()) << "rank " << rank << ": " << comm.status();
      auto limit = std::make_shared<WaitLimit>();
      (*comm)->set_wait_limit(limit);
      at::Tensor t = RankData(rank, {1024}, 3, (*comm)->device());
      // Healthy operations under the limit complete as usual.
      ASSERT_TRUE((*comm)->AllReduce(t).ok());
      ASSERT_TRUE((*comm)->Barrier().ok());
      if (rank == 0) {
        limit->SetDeadline(absl::Now() + absl::Seconds(1));
        const absl::Time t0 = absl::Now();
        ASSERT_TRUE((*comm)->AllReduce(t).ok());  // enqueued; rank 1 never joins it
        const absl::Status s = (*comm)->Barrier();
        EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
        EXPECT_THAT(std::string(s.message()), HasSubstr("wait limit"));
        EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
        EXPECT_FALSE((*comm)->usable());
        EXPECT_EQ((*comm)->AllReduce(t).code(), absl::StatusCode::kDeadlineExceeded);
        rank0_done = true;
      } else {
        while (!rank0_done) absl::SleepFor(absl::Milliseconds(10));
        limit->Abort(absl::UnavailableError("rank 0 ended the generation"));
        const absl::Status s = (*comm)->AllReduce(t);
        EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
        EXPECT_FALSE((*comm)->usable());
      }
    });
  }
  for (std::thread& th : threads) th.join();
}

}  // namespace
}  // namespace diffmesh::models::parallel
