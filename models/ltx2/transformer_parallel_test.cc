// The sharded LTX-2 transformer forward (Ulysses × ring over video frames × tensor parallel,
// Gloo ranks as threads) against the single-rank forward of the same weights: video and audio,
// plain, STG, modality-isolated and image-conditioned (per-token timestep, self-attention mask)
// calls.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/ltx2/transformer.h"
#include "models/parallel/layout.h"
#include "models/parallel/test_ranks.h"

namespace diffmesh::models::ltx2 {
namespace {

using ::testing::HasSubstr;
using parallel::Axis;
using parallel::Communicator;
using parallel::ParallelConfig;
using parallel::RankLayout;
using parallel::testing::RunGlooRanks;

constexpr double kTolerance = 1e-5;
constexpr uint64_t kWeightSeed = 23;

at::Tensor Randn(at::IntArrayRef shape, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::kFloat);
}

at::Tensor Rand(at::IntArrayRef shape, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::rand(shape, gen, at::kFloat);
}

Ltx2TransformerConfig FixtureConfig(const std::string& variant) {
  auto config =
      Ltx2TransformerConfig::FromFile(FixturePath("ltx2-ref-a/" + variant + "/transformer/config.json"));
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : Ltx2TransformerConfig{};
}

// The fixture config with twice the heads of both streams (same head widths), so that under
// tp 2 × Ulysses 2 every rank keeps a whole video head for the Ulysses all-to-all (the fixture's
// own heads take the key/value all-gather path there).
Ltx2TransformerConfig DoubledHeads(Ltx2TransformerConfig c) {
  c.num_attention_heads *= 2;
  c.audio_num_attention_heads *= 2;
  // The text widths the 2.3 prompt modulation needs (and the cross-modal RoPE width).
  c.cross_attention_dim = c.inner_dim();
  c.audio_cross_attention_dim = c.audio_inner_dim();
  return c;
}

// A call: a latent grid of `frames` frames (whole-frame shards for Ulysses 2), audio and text
// of other lengths, batch 2; sizes from the config.
struct Call {
  std::string name;
  Ltx2TransformerInputs in;
  Ltx2ForwardOptions options;
};

Ltx2TransformerInputs RandomInputs(const Ltx2TransformerConfig& c, int64_t frames,
                                   uint64_t seed) {
  const int64_t batch = 2, height = 2, width = 3, audio = 7, text = 5, audio_text = 4;
  const int64_t nv = frames * height * width;
  Ltx2TransformerInputs in;
  in.num_frames = frames;
  in.height = height;
  in.width = width;
  in.fps = 24.0;
  in.hidden_states = Randn({batch, nv, c.in_channels}, seed);
  in.audio_hidden_states = Randn({batch, audio, c.audio_in_channels}, seed + 1);
  const int64_t text_width = c.use_prompt_embeddings ? c.caption_channels : c.cross_attention_dim;
  const int64_t audio_text_width =
      c.use_prompt_embeddings ? c.caption_channels : c.audio_cross_attention_dim;
  in.encoder_hidden_states = Randn({batch, text, text_width}, seed + 2);
  in.audio_encoder_hidden_states = Randn({batch, audio_text, audio_text_width}, seed + 3);
  in.encoder_attention_mask = at::ones({batch, text}, at::kLong);
  in.encoder_attention_mask[1].narrow(0, text - 2, 2).fill_(0);  // padded prompt
  in.audio_encoder_attention_mask = at::ones({batch, audio_text}, at::kLong);
  in.audio_encoder_attention_mask[0].narrow(0, audio_text - 1, 1).fill_(0);
  in.timestep = Rand({batch}, seed + 4) * 1000;
  in.sigma = in.timestep / 1000;
  in.audio_timestep = Rand({batch}, seed + 5) * 1000;
  in.audio_sigma = in.audio_timestep / 1000;
  return in;
}

std::vector<Call> Calls(const Ltx2TransformerConfig& c, int64_t frames) {
  std::vector<Call> calls;
  Call base{"base", RandomInputs(c, frames, 100), {}};
  base.options.use_cross_timestep = true;
  calls.push_back(base);

  Call stg = base;  // perturbed in the last block, first row kept
  stg.name = "stg_partial";
  stg.options.stg_blocks = {c.num_layers - 1};
  stg.options.perturbation_mask = at::tensor({1.0f, 0.0f});
  calls.push_back(stg);
  stg.name = "stg_all";
  stg.options.perturbation_mask = at::Tensor();
  stg.options.stg_blocks = {0};
  calls.push_back(stg);

  Call modality = base;
  modality.name = "modality";
  modality.options.isolate_modalities = true;
  calls.push_back(modality);

  // Image conditioning: a per-token video timestep (first frame clean) and a soft video
  // self-attention mask; cross-modal modulation by the own timestep.
  Call image{"image", RandomInputs(c, frames, 200), {}};
  const int64_t nv = image.in.hidden_states.size(1), per_frame = nv / frames;
  at::Tensor t = image.in.timestep.view({-1, 1}).repeat({1, nv});
  t.narrow(1, 0, per_frame).zero_();
  image.in.timestep = t;
  image.in.video_self_attention_mask = Rand({2, nv, nv}, 201);
  calls.push_back(image);
  return calls;
}

// This rank's tp, Ulysses and ring groups of `config` (cfg 1), split off `world`.
struct Groups {
  std::unique_ptr<Communicator> tp, ulysses, ring;

  Ltx2ParallelContext context() const { return {tp.get(), ulysses.get(), ring.get()}; }
};

Groups SplitGroups(Communicator& world, const ParallelConfig& config) {
  Groups g;
  for (Axis axis : {Axis::kTp, Axis::kUlysses, Axis::kRing}) {
    for (const std::vector<int>& ranks : RankLayout::AllGroups(config, axis)) {
      auto comm = world.Split(ranks);
      EXPECT_TRUE(comm.ok()) << comm.status();
      if (!comm.ok() || *comm == nullptr) continue;
      (axis == Axis::kTp ? g.tp : axis == Axis::kUlysses ? g.ulysses : g.ring) = *std::move(comm);
    }
  }
  return g;
}

struct Layout {
  int ulysses;
  int tp;
  int ring = 1;
};

constexpr int kWorld = 4;  // every layout below fits; smaller ones run as several copies

// One layout on `world`: rank `world.rank()` runs its copy of the layout's group.
void RunLayout(Communicator& world, const std::string& label, const Ltx2TransformerConfig& config,
               const Layout& layout, const std::vector<Call>& calls,
               const std::vector<Ltx2TransformerOutputs>& expected) {
  SCOPED_TRACE(absl::StrCat(label, " ulysses ", layout.ulysses, " tp ", layout.tp, " ring ",
                            layout.ring));
  ParallelConfig pc;
  pc.tp = layout.tp;
  pc.ulysses = layout.ulysses;
  pc.ring = layout.ring;
  std::unique_ptr<Communicator> copy;
  for (int first = 0; first < world.size(); first += pc.world()) {
    std::vector<int> ranks;
    for (int r = first; r < first + pc.world(); ++r) ranks.push_back(r);
    auto comm = world.Split(ranks);
    ASSERT_TRUE(comm.ok()) << comm.status();
    if (*comm != nullptr) copy = *std::move(comm);
  }
  ASSERT_NE(copy, nullptr);
  Groups g = SplitGroups(*copy, pc);
  ASSERT_TRUE(g.tp != nullptr && g.ulysses != nullptr && g.ring != nullptr);
  // Built whole and sliced, as every layout shares one rank's weights.
  auto model = Ltx2Transformer::InitSeeded(config, kWeightSeed, g.context());
  ASSERT_TRUE(model.ok()) << model.status();
  for (size_t i = 0; i < calls.size(); ++i) {
    auto out = (*model)->Forward(calls[i].in, calls[i].options);
    ASSERT_TRUE(out.ok()) << calls[i].name << ": " << out.status();
    const double video_err = RelativeError(out->video, expected[i].video);
    const double audio_err = RelativeError(out->audio, expected[i].audio);
    EXPECT_LE(video_err, kTolerance) << calls[i].name << " video, rank " << world.rank();
    EXPECT_LE(audio_err, kTolerance) << calls[i].name << " audio, rank " << world.rank();
    // The replicated audio is the same on every rank, to the bit.
    auto audios = copy->AllGatherList(out->audio.contiguous());
    ASSERT_TRUE(audios.ok()) << audios.status();
    for (const at::Tensor& a : *audios) EXPECT_TRUE(at::equal(a, out->audio)) << calls[i].name;
    if (world.rank() == 0) {
      std::printf("%s u%d tp%d ring%d %-12s video %.2e audio %.2e\n", label.c_str(),
                  layout.ulysses, layout.tp, layout.ring, calls[i].name.c_str(), video_err,
                  audio_err);
    }
  }
  // A whole model from any builder, sharded afterwards, computes the same.
  auto whole = Ltx2Transformer::InitSeeded(config, kWeightSeed);
  ASSERT_TRUE(whole.ok()) << whole.status();
  auto resharded = Ltx2Transformer::Parallelize(*std::move(whole), g.context());
  ASSERT_TRUE(resharded.ok()) << resharded.status();
  auto again = (*resharded)->Forward(calls[0].in, calls[0].options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_LE(RelativeError(again->video, expected[0].video), kTolerance);
  EXPECT_LE(RelativeError(again->audio, expected[0].audio), kTolerance);
  // Without the gather each rank keeps its own frames.
  Ltx2ForwardOptions local_options = calls[0].options;
  local_options.gather_video = false;
  auto shard = (*model)->VideoShard(calls[0].in);
  ASSERT_TRUE(shard.ok()) << shard.status();
  auto local = (*model)->Forward(calls[0].in, local_options);
  ASSERT_TRUE(local.ok()) << local.status();
  // Shard u + U·r (RankLayout::sp_rank).
  EXPECT_EQ(shard->frame_count * layout.ulysses * layout.ring, calls[0].in.num_frames);
  EXPECT_EQ(shard->frame_offset,
            (g.ulysses->rank() + layout.ulysses * g.ring->rank()) * shard->frame_count);
  EXPECT_LE(RelativeError(local->video, expected[0].video.narrow(1, shard->token_offset,
                                                                  shard->token_count)),
            kTolerance);
}

// Every layout of `layouts` reproduces the single-rank forward of `config`.
void ExpectShardedMatchesSingleRank(const std::string& label, const Ltx2TransformerConfig& config,
                                    const std::vector<Layout>& layouts) {
  auto single = Ltx2Transformer::InitSeeded(config, kWeightSeed);
  ASSERT_TRUE(single.ok()) << single.status();
  const std::vector<Call> calls = Calls(config, /*frames=*/4);  // 1 per rank at Ulysses × ring 4
  std::vector<Ltx2TransformerOutputs> expected;
  for (const Call& call : calls) {
    auto out = (*single)->Forward(call.in, call.options);
    ASSERT_TRUE(out.ok()) << call.name << ": " << out.status();
    ASSERT_GT(out->video.norm().item<double>(), 0);
    ASSERT_GT(out->audio.norm().item<double>(), 0);
    expected.push_back(*out);
  }
  RunGlooRanks(kWorld, [&](Communicator& world) {
    for (const Layout& layout : layouts) RunLayout(world, label, config, layout, calls, expected);
  });
}

const std::vector<Layout> kLayouts = {{2, 1}, {1, 2}, {2, 2}};

TEST(Ltx2TransformerParallelTest, Ltx23MatchesSingleRank) {
  ExpectShardedMatchesSingleRank("v23", FixtureConfig("v23"), kLayouts);
}

TEST(Ltx2TransformerParallelTest, Ltx20MatchesSingleRank) {
  ExpectShardedMatchesSingleRank("v20", FixtureConfig("v20"), kLayouts);
}

// With whole heads per rank the video self-attention takes the Ulysses all-to-all under tp 2 ×
// Ulysses 2 (the fixture's 2 heads take the key/value all-gather there); split and interleaved
// RoPE tables (cut by head bands / by channels).
TEST(Ltx2TransformerParallelTest, UlyssesAllToAllWithTensorParallelMatchesSingleRank) {
  ExpectShardedMatchesSingleRank("v23x2heads", DoubledHeads(FixtureConfig("v23")), {{2, 2}});
  Ltx2TransformerConfig interleaved = DoubledHeads(FixtureConfig("v23"));
  interleaved.rope_type = RopeType::kInterleaved;
  ExpectShardedMatchesSingleRank("v23x2heads-interleaved", interleaved, {{2, 2}, {2, 1}});
}

// Ring attention over the video frames, alone and with Ulysses or tensor parallelism: every
// call (STG partial and all-perturbed, modality isolation, the image call's self-attention
// mask cut per key block) on both streams. Under Ulysses 2 × ring 2 the fixture's 2 heads take
// the all-to-all inside each ring block; under tp 2 × ring 2 each tp rank rings its one head.
TEST(Ltx2TransformerParallelTest, RingAttentionMatchesSingleRank) {
  ExpectShardedMatchesSingleRank("v23", FixtureConfig("v23"), {{1, 1, 2}, {2, 1, 2}, {1, 2, 2}});
  ExpectShardedMatchesSingleRank("v20", FixtureConfig("v20"), {{2, 1, 2}});
}

// One head per stream (of twice the width), so Ulysses 2 × ring 2 takes the key/value
// all-gather inside each ring block.
TEST(Ltx2TransformerParallelTest, RingWithKeyValueGatherMatchesSingleRank) {
  Ltx2TransformerConfig one_head = FixtureConfig("v23");
  one_head.attention_head_dim *= one_head.num_attention_heads;
  one_head.num_attention_heads = 1;
  one_head.audio_attention_head_dim *= one_head.audio_num_attention_heads;
  one_head.audio_num_attention_heads = 1;
  ExpectShardedMatchesSingleRank("v23x1head", one_head, {{2, 1, 2}});
}

TEST(Ltx2TransformerParallelTest, RejectsFramesNotDividingAndHeadsNotDividing) {
  const Ltx2TransformerConfig config = FixtureConfig("v23");
  RunGlooRanks(2, [&](Communicator& world) {
    // The whole world as the Ulysses group.
    auto model = Ltx2Transformer::InitSeeded(config, kWeightSeed, {nullptr, &world});
    ASSERT_TRUE(model.ok()) << model.status();
    Ltx2TransformerInputs in = RandomInputs(config, /*frames=*/3, 1);
    auto out = (*model)->Forward(in);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(out.status().message(), HasSubstr("3 latent frames"));
    EXPECT_THAT(out.status().message(), HasSubstr("Ulysses degree 2"));
    EXPECT_THAT(out.status().message(), HasSubstr("sequence-parallel degree 2"));
    in.num_frames = 0;  // coordinates alone do not say where the frames are
    in.video_coords = at::zeros({2, 3, in.hidden_states.size(1), 2});
    out = (*model)->Forward(in);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(out.status().message(), HasSubstr("num_frames/height/width"));
    // The whole world as the ring group: the same rule for the sequence-parallel degree
    // Ulysses × ring.
    auto ring = Ltx2Transformer::InitSeeded(config, kWeightSeed, {nullptr, nullptr, &world});
    ASSERT_TRUE(ring.ok()) << ring.status();
    out = (*ring)->Forward(RandomInputs(config, /*frames=*/3, 1));
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(out.status().message(),
                HasSubstr("3 latent frames do not divide by the sequence-parallel degree 2 "
                          "(Ulysses degree 1 × ring degree 2"));
  });
  Ltx2TransformerConfig odd = config;
  odd.num_attention_heads = 3;
  RunGlooRanks(2, [&](Communicator& world) {
    auto model = Ltx2Transformer::InitSeeded(odd, kWeightSeed, {&world, nullptr});
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(model.status().message(), HasSubstr("3 video"));
  });
}

}  // namespace
}  // namespace diffmesh::models::ltx2
