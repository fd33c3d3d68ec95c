// Run-time LoRA under tensor parallelism (and Ulysses): each rank keeps its slices of the
// adapter (column-parallel layers their rows of lora_B, row-parallel layers their columns of
// lora_A) and the sharded forward with the adapter matches the single-rank forward with it.
// Gloo ranks as threads.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/ltx2/lora.h"
#include "models/ltx2/transformer.h"
#include "models/parallel/layout.h"
#include "models/parallel/test_ranks.h"

namespace diffmesh::models::ltx2 {
namespace {

using parallel::Axis;
using parallel::Communicator;
using parallel::ParallelConfig;
using parallel::RankLayout;
using parallel::testing::RunGlooRanks;

constexpr double kTolerance = 1e-5;
constexpr uint64_t kWeightSeed = 31;
constexpr double kStrength = 0.8;

at::Tensor Randn(at::IntArrayRef shape, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::kFloat);
}

// A random adapter of every Linear layer of `config` in the diffusers key style: rank 3, an
// alpha on every other layer.
std::map<std::string, at::Tensor> RandomLora(const Ltx2TransformerConfig& config) {
  std::map<std::string, at::Tensor> tensors;
  uint64_t seed = 500;
  bool alpha = false;
  for (const ParamSpec& s : Ltx2Transformer::Params(config)) {
    if (s.shape.size() != 2 || !absl::EndsWith(s.name, ".weight")) continue;
    const std::string module = "transformer." + s.name.substr(0, s.name.size() - 7);
    const int64_t rank = 3;
    tensors[module + ".lora_A.weight"] = Randn({rank, s.shape[1]}, seed++) * 0.2;
    tensors[module + ".lora_B.weight"] = Randn({s.shape[0], rank}, seed++) * 0.2;
    if ((alpha = !alpha)) tensors[module + ".alpha"] = at::scalar_tensor(1.5);
  }
  return tensors;
}

Ltx2TransformerInputs RandomInputs(const Ltx2TransformerConfig& c, int64_t frames) {
  const int64_t batch = 2, height = 2, width = 3, audio = 5, text = 4;
  Ltx2TransformerInputs in;
  in.num_frames = frames;
  in.height = height;
  in.width = width;
  in.hidden_states = Randn({batch, frames * height * width, c.in_channels}, 1);
  in.audio_hidden_states = Randn({batch, audio, c.audio_in_channels}, 2);
  const int64_t text_width = c.use_prompt_embeddings ? c.caption_channels : c.cross_attention_dim;
  const int64_t audio_text_width =
      c.use_prompt_embeddings ? c.caption_channels : c.audio_cross_attention_dim;
  in.encoder_hidden_states = Randn({batch, text, text_width}, 3);
  in.audio_encoder_hidden_states = Randn({batch, text, audio_text_width}, 4);
  in.timestep = at::tensor({700.0f, 300.0f});
  in.sigma = in.timestep / 1000;
  return in;
}

struct Groups {
  std::unique_ptr<Communicator> copy, tp, ulysses;
};

// This rank's copy of a `pc` group on `world`, and its tp and Ulysses groups.
Groups SplitGroups(Communicator& world, const ParallelConfig& pc) {
  Groups g;
  for (int first = 0; first < world.size(); first += pc.world()) {
    std::vector<int> ranks;
    for (int r = first; r < first + pc.world(); ++r) ranks.push_back(r);
    auto comm = world.Split(ranks);
    EXPECT_TRUE(comm.ok()) << comm.status();
    if (comm.ok() && *comm != nullptr) g.copy = *std::move(comm);
  }
  if (g.copy == nullptr) return g;
  for (Axis axis : {Axis::kTp, Axis::kUlysses}) {
    for (const std::vector<int>& ranks : RankLayout::AllGroups(pc, axis)) {
      auto comm = g.copy->Split(ranks);
      EXPECT_TRUE(comm.ok()) << comm.status();
      if (comm.ok() && *comm != nullptr) (axis == Axis::kTp ? g.tp : g.ulysses) = *std::move(comm);
    }
  }
  return g;
}

void ExpectShardedMatchesSingleRank(const std::string& variant) {
  SCOPED_TRACE(variant);
  auto config = Ltx2TransformerConfig::FromFile(
      FixturePath("ltx2-ref-a/" + variant + "/transformer/config.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  const std::map<std::string, at::Tensor> tensors = RandomLora(*config);
  const Ltx2TransformerInputs in = RandomInputs(*config, /*frames=*/4);

  auto single = Ltx2Transformer::InitSeeded(*config, kWeightSeed);
  ASSERT_TRUE(single.ok()) << single.status();
  auto whole_lora = Ltx2Lora::FromTensors(tensors, *config, {}, "random");
  ASSERT_TRUE(whole_lora.ok()) << whole_lora.status();
  Ltx2ForwardOptions options;
  options.use_cross_timestep = true;
  options.lora = whole_lora->get();
  options.lora_strength = kStrength;
  auto expected = (*single)->Forward(in, options);
  ASSERT_TRUE(expected.ok()) << expected.status();
  Ltx2ForwardOptions plain_options = options;
  plain_options.lora = nullptr;
  auto plain = (*single)->Forward(in, plain_options);
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_GT(RelativeError(plain->video, expected->video), 1e-2);  // the adapter matters
  ASSERT_GT(RelativeError(plain->audio, expected->audio), 1e-2);

  constexpr int kWorld = 4;
  RunGlooRanks(kWorld, [&](Communicator& world) {
    for (auto [ulysses, tp] : {std::pair{1, 2}, std::pair{2, 2}}) {
      SCOPED_TRACE(absl::StrCat("ulysses ", ulysses, " tp ", tp));
      ParallelConfig pc;
      pc.tp = tp;
      pc.ulysses = ulysses;
      Groups g = SplitGroups(world, pc);
      ASSERT_TRUE(g.tp != nullptr && g.ulysses != nullptr);
      auto model = Ltx2Transformer::InitSeeded(*config, kWeightSeed, {g.tp.get(), g.ulysses.get()});
      ASSERT_TRUE(model.ok()) << model.status();
      auto lora = Ltx2Lora::FromTensors(tensors, *config,
                                        {at::kFloat, at::kCPU, SliceOf(g.tp.get())}, "random");
      ASSERT_TRUE(lora.ok()) << lora.status();
      // Column-parallel: this rank's rows of lora_B; row-parallel: its columns of lora_A.
      const LoraLayer* q = (*lora)->Find("transformer_blocks.0.attn1.to_q");
      const LoraLayer* out = (*lora)->Find("transformer_blocks.0.ff.net.2");
      ASSERT_TRUE(q != nullptr && out != nullptr);
      EXPECT_EQ(q->up.size(0) * tp, config->inner_dim());
      EXPECT_EQ(out->down.size(1) * tp, 4 * config->inner_dim());
      Ltx2ForwardOptions sharded = options;
      sharded.lora = lora->get();
      auto got = (*model)->Forward(in, sharded);
      ASSERT_TRUE(got.ok()) << got.status();
      const double video_err = RelativeError(got->video, expected->video);
      const double audio_err = RelativeError(got->audio, expected->audio);
      EXPECT_LE(video_err, kTolerance);
      EXPECT_LE(audio_err, kTolerance);
      if (world.rank() == 0) {
        std::printf("%s u%d tp%d lora: video %.2e audio %.2e\n", variant.c_str(), ulysses, tp,
                    video_err, audio_err);
      }
      // The whole (unsliced) adapter is refused by a sharded model.
      Ltx2ForwardOptions wrong = options;
      EXPECT_EQ((*model)->Forward(in, wrong).status().code(), absl::StatusCode::kInvalidArgument);
    }
  });
}

TEST(Ltx2LoraParallelTest, Ltx23MatchesSingleRank) { ExpectShardedMatchesSingleRank("v23"); }
TEST(Ltx2LoraParallelTest, Ltx20MatchesSingleRank) { ExpectShardedMatchesSingleRank("v20"); }

}  // namespace
}  // namespace diffmesh::models::ltx2
