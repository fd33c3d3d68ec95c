// The denoise group over Gloo ranks (threads of this process): every layout gives the
// single-rank result.
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/image/png.h"
#include "common/tensor/wire_tensor.h"
#include "gtest/gtest.h"
#include "models/core/ops.h"
#include "models/parallel/test_ranks.h"
#include "models/glm_image/glm_image_spec.h"
#include "services/denoise/denoise_core.h"
#include "services/denoise/denoise_group.h"
#include "services/denoise/testing/denoise_outputs.h"
#include "services/denoise/testing/streamed_inputs.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {
namespace {

using models::parallel::ParallelConfig;

v1::DenoiseRequest Request(uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> dist;
  v1::DenoiseRequest r;
  r.set_model("glm-image-tiny");
  r.set_height(96);
  r.set_width(64);
  r.set_steps(2);
  r.mutable_guidance()->mutable_main()->set_cfg_scale(2.5f);
  r.set_seed(seed);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  std::vector<int64_t> grid(3 * 2);
  for (auto& t : grid) t = static_cast<int64_t>(rng() % 256);
  *r.mutable_prior_tokens() = MakeTensor(DType::kInt64, {3, 2}, grid.data(), grid.size() * 8);
  for (auto [field, len] : {std::pair{r.mutable_prompt_embeds(), 5}, std::pair{r.mutable_negative_prompt_embeds(), 1}}) {
    std::vector<float> v(len * 64);
    for (auto& x : v) x = dist(rng);
    *field = MakeTensor(DType::kFloat32, {1, len, 64}, v.data(), v.size() * 4);
  }
  return r;
}

v1::DenoiseRequest FourBranchRequest(uint64_t seed) {
  v1::DenoiseRequest r = Request(seed);
  auto* g = r.mutable_guidance();
  g->mutable_main()->set_stg_scale(0.75f);
  g->mutable_stg_blocks()->add_blocks(1);
  g->mutable_main()->set_modality_scale(1.5f);
  g->mutable_main()->set_rescale(0.5f);
  return r;
}

struct Output {
  at::Tensor latents;
};

// Starts a group of `parallel.world()` ranks (threads): ranks > 0 run as workers, rank 0 runs
// `main` with its core; the group stops when `main` returns.
void RunRanks(const ParallelConfig& parallel, const std::function<void(DenoiseCore&)>& main) {
  // Ranks as threads share LibTorch 2.x's process-wide Gloo flight recorder, which is not safe
  // for that: keep it off (one rank per process, as deployed, is unaffected).
  setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
  const int world = parallel.world();
  const int port = models::parallel::testing::FreeLoopbackPort();
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < world; ++rank) {
    ranks.emplace_back([&, rank] {
      DenoiseCore::Options o;
      o.parallel = parallel;
      o.rendezvous.world_size = world;
      o.rendezvous.rank = rank;
      o.rendezvous.master_port = port;
      o.rendezvous.timeout = std::chrono::seconds(60);
      auto core = DenoiseCore::Create(o);
      ASSERT_TRUE(core.ok()) << "rank " << rank << ": " << core.status();
      if (rank != 0) {
        absl::Status s = (*core)->RunWorker();
        EXPECT_TRUE(s.ok()) << "rank " << rank << ": " << s;
        return;
      }
      main(**core);
    });  // rank 0's core is destroyed here, which stops the others
  }
  for (auto& t : ranks) t.join();
}

// Rank 0's events as its latents.
Output ToOutput(const testing::DenoiseOutputs& events) {
  Output out;
  EXPECT_TRUE(events.have_result && events.broken.ok()) << events.broken;
  const v1::Output* latents = events.Find("latents");
  EXPECT_NE(latents, nullptr);
  if (latents == nullptr) return out;
  auto t = testing::TensorOf(*latents);
  EXPECT_TRUE(t.ok()) << t.status();
  if (t.ok()) out.latents = *t;
  return out;
}

// Runs `request` on a group of `parallel.world()` ranks (threads); returns rank 0's result.
Output RunGroup(const ParallelConfig& parallel, const v1::DenoiseRequest& request) {
  Output out;
  RunRanks(parallel, [&](DenoiseCore& core) {
    CallContext ctx;
    testing::DenoiseOutputs events;
    absl::Status s = core.Denoise(ctx, request, [&](const v1::DenoiseEvent& e) { events.Add(e); });
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(events.steps, request.steps());
    out = ToOutput(events);
  });
  return out;
}

std::string Name(const ParallelConfig& p) {
  return absl::StrCat("cfg", p.cfg, "_u", p.ulysses, "_r", p.ring, "_tp", p.tp);
}

void ExpectSame(const Output& got, const Output& want, const std::string& layout) {
  ASSERT_TRUE(got.latents.defined()) << layout;
  const double err = models::RelativeError(got.latents, want.latents);
  EXPECT_LE(err, 1e-5) << layout;
  std::printf("%-18s latents rel err %.2e\n", layout.c_str(), err);
}

TEST(DenoiseGroupTest, EveryLayoutMatchesOneRank) {
  const v1::DenoiseRequest request = Request(1234);
  const Output single = RunGroup({}, request);
  int layouts = 0;
  for (int cfg : {1, 2, 3, 4}) {
    for (int u : {1, 2}) {
      for (int r : {1, 2}) {
        for (int tp : {1, 2}) {
          ParallelConfig p;
          p.cfg = cfg;
          p.ulysses = u;
          p.ring = r;
          p.tp = tp;
          if (p.world() == 1 || p.world() > 8) continue;
          ExpectSame(RunGroup(p, request), single, Name(p));
          ++layouts;
        }
      }
    }
  }
  EXPECT_EQ(layouts, 22);
}

// Streamed requests on a group of four ranks: rank 0 broadcasts the grid pieces and the
// embeddings as they arrive. A streamed request whose inputs fail is dropped by every rank
// (kAbort) and the group goes on: the next streamed request, and a whole one after it, give the
// one-rank image.
TEST(DenoiseGroupTest, StreamedRequestsAcrossRanksMatchOneRank) {
  const v1::DenoiseRequest request = Request(77);
  const Output single = RunGroup({}, request);
  ParallelConfig p;
  p.cfg = 2;
  p.ulysses = 2;
  RunRanks(p, [&](DenoiseCore& core) {
    auto streamed = [&](absl::Status close, size_t keep) {
      InputQueue<v1::DenoiseInput> queue;
      std::vector<v1::DenoiseInput> inputs = testing::StreamedInputsOf(request, 2);
      inputs.resize(std::min(keep, inputs.size()));
      std::thread producer([&] {
        for (auto& in : inputs) {
          queue.Push(std::move(in));
          absl::SleepFor(absl::Microseconds(300));
        }
        queue.Close(close);
      });
      CallContext ctx;
      testing::DenoiseOutputs events;
      absl::Status s = core.DenoiseStreamed(ctx, queue, [&](const v1::DenoiseEvent& e) {
        events.Add(e);
      });
      producer.join();
      return std::make_pair(s, events);
    };
    auto failed = streamed(absl::UnavailableError("ar down"), 40);
    EXPECT_EQ(failed.first.code(), absl::StatusCode::kUnavailable) << failed.first;
    auto ok = streamed(absl::OkStatus(), 1000);
    ASSERT_TRUE(ok.first.ok()) << ok.first;
    ExpectSame(ToOutput(ok.second), single, "streamed cfg2_u2");
    CallContext ctx;
    testing::DenoiseOutputs events;
    ASSERT_TRUE(core.Denoise(ctx, request, [&](const v1::DenoiseEvent& e) { events.Add(e); }).ok());
    ExpectSame(ToOutput(events), single, "whole after streamed");
  });
}

TEST(DenoiseGroupTest, FourBranchGuidanceMatchesOneRankForAnyCfgDegree) {
  const v1::DenoiseRequest request = FourBranchRequest(99);
  const Output single = RunGroup({}, request);
  // Four branches really differ from the two-branch result (by far more than the 1e-8 that
  // parallel layouts differ by; the tiny random DiT moves little between branches).
  EXPECT_GT(models::RelativeError(single.latents, RunGroup({}, Request(99)).latents), 1e-5);
  for (int cfg : {2, 3, 4, 8}) {
    ParallelConfig p;
    p.cfg = cfg;
    ExpectSame(RunGroup(p, request), single, Name(p));
  }
}

// The DiT itself under sequence parallelism with image-token counts that do not divide by sp:
// the padding is masked, not rejected.
TEST(DenoiseGroupTest, DitForwardWithPaddedSequenceShardsMatchesOneRank) {
  auto spec = models::glm_image::BuiltinSpec("glm-image-tiny");
  ASSERT_TRUE(spec.ok());
  auto full = models::glm_image::BuildDit(*spec);
  ASSERT_TRUE(full.ok());
  at::manual_seed(7);
  models::glm_image::DitInputs in;
  in.hidden_states = at::randn({1, 16, 10, 6});  // 5 × 3 = 15 image tokens
  in.encoder_hidden_states = at::randn({1, 3, 64});
  in.prior_token_id = at::randint(0, 256, {1, 15}, at::kLong);
  in.prior_token_drop = at::rand({1, 15}).lt(0.3);
  in.timestep = at::full({1}, 500.0);
  in.target_size = at::tensor({80.0f, 48.0f}).view({1, 2});
  in.crop_coords = at::zeros({1, 2});
  const at::Tensor want = (*full)->Forward(in);
  for (auto [u, r, tp] : {std::tuple{2, 1, 1}, std::tuple{1, 2, 1}, std::tuple{2, 2, 1}, std::tuple{2, 2, 2},
                          std::tuple{1, 1, 2}}) {
    DenoiseGroupOptions o;
    o.parallel.ulysses = u;
    o.parallel.ring = r;
    o.parallel.tp = tp;
    o.num_heads = 4;
    const int world = o.parallel.world();
    o.rendezvous.world_size = world;
    o.rendezvous.master_port = models::parallel::testing::FreeLoopbackPort();
    std::vector<std::thread> ranks;
    for (int rank = 0; rank < world; ++rank) {
      ranks.emplace_back([&, o, rank]() mutable {
        o.rendezvous.rank = rank;
        auto group = DenoiseGroup::Create(o);
        ASSERT_TRUE(group.ok()) << group.status();
        auto dit = models::glm_image::BuildDit(*spec, at::kFloat, {(*group)->layout().tp_rank(), tp});
        ASSERT_TRUE(dit.ok());
        at::Tensor got = (*dit)->Forward(in, &(*group)->dit_collectives());
        EXPECT_LE(models::RelativeError(got, want), 1e-5)
            << "u" << u << " r" << r << " tp" << tp << " rank " << rank;
      });
    }
    for (auto& t : ranks) t.join();
  }
}

// A request waiting for a busy group leaves as soon as it is cancelled, not when the group frees
// (nor at its deadline); the next request gets the group once it is released.
TEST(DenoiseGroupTest, ACancelledRequestStopsWaitingForTheGroup) {
  DenoiseGroupOptions o;
  o.num_heads = 4;
  o.rendezvous.world_size = 1;
  o.rendezvous.master_port = models::parallel::testing::FreeLoopbackPort();
  auto group = DenoiseGroup::Create(o);
  ASSERT_TRUE(group.ok()) << group.status();
  CallContext holder;
  ASSERT_TRUE((*group)->Send(DenoiseGroup::Command::kPing, "", holder).ok());
  CallContext waiter(absl::Now() + absl::Seconds(60));
  std::thread cancel([&] {
    absl::SleepFor(absl::Milliseconds(300));
    waiter.Cancel();
  });
  const absl::Time t0 = absl::Now();
  absl::Status s = (*group)->Send(DenoiseGroup::Command::kPing, "", waiter);
  const absl::Duration waited = absl::Now() - t0;
  cancel.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_LT(waited, absl::Seconds(5)) << "left the queue only after " << waited;
  (*group)->Release();
  CallContext next;
  EXPECT_TRUE((*group)->Send(DenoiseGroup::Command::kPing, "", next).ok());
  (*group)->Release();
}

TEST(DenoiseGroupTest, LayoutErrorsAreClear) {
  DenoiseCore::Options o;
  o.parallel.ulysses = 8;  // the tiny DiT has 4 heads
  o.rendezvous.world_size = 8;
  auto core = DenoiseCore::Create(o);
  ASSERT_FALSE(core.ok());
  EXPECT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(core.status().message().find("heads"), std::string::npos) << core.status();
  o.parallel.ulysses = 2;
  o.rendezvous.world_size = 3;
  core = DenoiseCore::Create(o);
  ASSERT_FALSE(core.ok());
  EXPECT_NE(core.status().message().find("world size 3"), std::string::npos) << core.status();
}

}  // namespace
}  // namespace diffmesh
