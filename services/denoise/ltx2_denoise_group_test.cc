// LTX-2 on a denoise group of Gloo ranks (threads of this process): every layout of
// {CFG 1, 2, 3, 4} × {Ulysses 1, 2} × {TP 1, 2}, and ring 2 alone and with Ulysses 2, TP 2 or
// CFG 2, with all four guidance branches live and with some off (idle ranks), reproduces the
// single-rank pipeline's final video and audio latents (Ltx2Pipeline::Denoise, the serial
// combine) in fp32.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/image/png.h"
#include "gtest/gtest.h"
#include "models/core/ops.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/pipeline.h"
#include "models/parallel/test_ranks.h"
#include "services/denoise/denoise_core.h"
#include "services/denoise/testing/denoise_outputs.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh {
namespace {

namespace ltx2 = models::ltx2;
using models::parallel::ParallelConfig;

constexpr char kModel[] = "ltx2-tiny";
// The bar for a layout against one rank, fp32.
constexpr double kTol = 1e-5;

struct Latents {
  at::Tensor video;  // [B, C, F, H, W] denormalised
  at::Tensor audio;  // [B, C_a, L, M']
};

// One request: its guidance (both as the pipeline takes it and on the wire) and fresh random
// text embeddings of the connectors' widths.
struct Case {
  ltx2::GuidanceOptions guidance;
  int steps = 2;
  uint64_t seed = 0;
  // Text lengths: equal ones let one rank batch cond and negative (as the single-rank
  // reference does), different ones make it run them apart.
  int prompt_tokens = 6;
  int negative_tokens = 6;
};

void SetStream(const ltx2::StreamGuidance& s, v1::StreamGuidance* g) {
  g->set_cfg_scale(static_cast<float>(s.cfg));
  g->set_stg_scale(static_cast<float>(s.stg));
  g->set_modality_scale(static_cast<float>(s.modality));
  g->set_rescale(static_cast<float>(s.rescale));
}

// Widths of the video and audio text embeddings the denoise stage takes.
std::pair<int64_t, int64_t> TextWidths() {
  auto spec = ltx2::BuiltinSpec(kModel);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto c = ltx2::ConnectorsConfig::FromJson(spec->connectors);
  EXPECT_TRUE(c.ok()) << c.status();
  return {c->video.inner_dim(), c->audio.inner_dim()};
}

v1::DenoiseRequest RequestOf(const Case& c) {
  v1::DenoiseRequest r;
  r.set_model(kModel);
  r.set_height(64);
  r.set_width(96);
  r.set_num_frames(9);
  r.set_frame_rate(24);
  r.set_steps(c.steps);
  r.set_seed(c.seed);
  auto* g = r.mutable_guidance();
  SetStream(c.guidance.video, g->mutable_main());
  SetStream(c.guidance.audio, g->mutable_audio());
  for (int64_t b : c.guidance.stg_blocks) g->mutable_stg_blocks()->add_blocks(b);
  g->set_skip_step(static_cast<int32_t>(c.guidance.skip_step));
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  const auto [video_width, audio_width] = TextWidths();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(c.seed + 100);
  for (auto [field, len] : {std::pair{r.mutable_prompt_embeds(), c.prompt_tokens},
                            std::pair{r.mutable_negative_prompt_embeds(), c.negative_tokens}}) {
    auto wire = ToWire(at::randn({1, len, video_width + audio_width}, gen));
    EXPECT_TRUE(wire.ok()) << wire.status();
    *field = *wire;
  }
  return r;
}

// The single-rank reference: the pipeline's own serial path on the same inputs.
Latents Reference(const Case& c, const v1::DenoiseRequest& r) {
  auto spec = ltx2::BuiltinSpec(kModel);
  EXPECT_TRUE(spec.ok());
  ltx2::Ltx2Models m;
  m.transformer = std::move(ltx2::BuildTransformer(*spec)).value();
  m.video_vae = std::move(ltx2::BuildVideoDecoder(*spec)).value();
  m.audio_vae = std::move(ltx2::BuildAudioDecoder(*spec)).value();
  m.scheduler = ltx2::BuildSchedulerConfig(*spec).value();
  auto pipeline = ltx2::Ltx2Pipeline::Create(m.networks(), c.guidance);
  EXPECT_TRUE(pipeline.ok()) << pipeline.status();
  const auto [video_width, audio_width] = TextWidths();
  const at::Tensor pos = FromWire(r.prompt_embeds(), "prompt_embeds").value();
  const at::Tensor neg = FromWire(r.negative_prompt_embeds(), "negative_prompt_embeds").value();
  ltx2::Ltx2TextEmbeddings text;
  text.video = pos.narrow(2, 0, video_width).contiguous();
  text.audio = pos.narrow(2, video_width, audio_width).contiguous();
  text.mask = at::ones({1, pos.size(1)}, at::kLong);
  text.negative_video = neg.narrow(2, 0, video_width).contiguous();
  text.negative_audio = neg.narrow(2, video_width, audio_width).contiguous();
  text.negative_mask = at::ones({1, neg.size(1)}, at::kLong);
  ltx2::Ltx2LatentInit init;
  init.num_frames = r.num_frames();
  init.height = r.height();
  init.width = r.width();
  init.frame_rate = r.frame_rate();
  init.seed = r.seed();
  init.num_inference_steps = r.steps();
  auto state = (*pipeline)->PrepareLatents(init);
  EXPECT_TRUE(state.ok()) << state.status();
  absl::Status s = (*pipeline)->Denoise(*state, text);
  EXPECT_TRUE(s.ok()) << s;
  ltx2::Ltx2DecodeOptions d;
  d.decode_video = false;
  d.decode_audio = false;
  d.noise_seed = r.seed();
  auto out = (*pipeline)->Decode(*state, d);
  EXPECT_TRUE(out.ok()) << out.status();
  return {out->video_latents, out->audio_latents};
}

ParallelConfig Layout(int cfg, int ulysses = 1, int tp = 1, int ring = 1) {
  ParallelConfig p;
  p.cfg = cfg;
  p.ulysses = ulysses;
  p.tp = tp;
  p.ring = ring;
  return p;
}

std::string Name(const ParallelConfig& p) {
  return absl::StrCat("cfg ", p.cfg, " × ulysses ", p.ulysses, " × ring ", p.ring, " × tp ",
                      p.tp);
}

// Starts the ranks (threads) of a group of ltx2-tiny: ranks > 0 run as workers, rank 0 runs
// `main` with its core; rank 0's core is destroyed when `main` returns, which stops the others.
void RunRanks(const ParallelConfig& layout, const std::function<void(DenoiseCore&)>& main) {
  // Ranks as threads share LibTorch's process-wide Gloo flight recorder: keep it off.
  setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
  const int port = models::parallel::testing::FreeLoopbackPort();
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < layout.world(); ++rank) {
    ranks.emplace_back([&, rank] {
      DenoiseCore::Options o;
      o.model = kModel;
      o.parallel = layout;
      o.rendezvous.world_size = layout.world();
      o.rendezvous.rank = rank;
      o.rendezvous.master_port = port;
      o.rendezvous.timeout = std::chrono::seconds(60);
      auto core = DenoiseCore::Create(o);
      ASSERT_TRUE(core.ok()) << "rank " << rank << ": " << core.status();
      EXPECT_EQ((*core)->rank(), rank);
      if (rank != 0) {
        absl::Status s = (*core)->RunWorker();
        EXPECT_TRUE(s.ok()) << "rank " << rank << ": " << s;
        return;
      }
      main(**core);
    });
  }
  for (auto& t : ranks) t.join();
}

Latents LatentsOf(const testing::DenoiseOutputs& events) {
  EXPECT_TRUE(events.have_result && events.broken.ok()) << events.broken;
  Latents out;
  for (auto [name, t] :
       {std::pair{"video_latents", &out.video}, std::pair{"audio_latents", &out.audio}}) {
    const v1::Output* o = events.Find(name);
    EXPECT_NE(o, nullptr) << name;
    if (o == nullptr) continue;
    auto tensor = testing::TensorOf(*o);
    EXPECT_TRUE(tensor.ok()) << tensor.status();
    if (tensor.ok()) *t = *tensor;
  }
  return out;
}

// Runs `r` on a group of `layout`; with `streamed` also through DenoiseStreamed (the request,
// then the embeddings) and expects the same latents.
Latents RunGroup(const ParallelConfig& layout, const v1::DenoiseRequest& r,
                 bool streamed = false) {
  Latents out;
  RunRanks(layout, [&](DenoiseCore& core) {
    CallContext ctx;
    testing::DenoiseOutputs events;
    absl::Status s = core.Denoise(ctx, r, [&](const v1::DenoiseEvent& e) { events.Add(e); });
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(events.steps, r.steps());
    out = LatentsOf(events);
    if (!streamed) return;
    InputQueue<v1::DenoiseInput> inputs;
    v1::DenoiseInput head;
    *head.mutable_request() = r;
    head.mutable_request()->clear_prompt_embeds();
    head.mutable_request()->clear_negative_prompt_embeds();
    ASSERT_TRUE(inputs.Push(head));
    v1::DenoiseInput embeddings;
    *embeddings.mutable_embeddings()->mutable_prompt_embeds() = r.prompt_embeds();
    *embeddings.mutable_embeddings()->mutable_negative_prompt_embeds() = r.negative_prompt_embeds();
    ASSERT_TRUE(inputs.Push(embeddings));
    inputs.Close();
    testing::DenoiseOutputs streamed_events;
    s = core.DenoiseStreamed(ctx, inputs,
                             [&](const v1::DenoiseEvent& e) { streamed_events.Add(e); });
    ASSERT_TRUE(s.ok()) << s;
    const Latents again = LatentsOf(streamed_events);
    EXPECT_TRUE(at::equal(again.video, out.video));
    EXPECT_TRUE(at::equal(again.audio, out.audio));
  });
  return out;
}

void ExpectMatches(const Latents& got, const Latents& want, const std::string& what) {
  ASSERT_TRUE(got.video.defined() && got.audio.defined()) << what;
  ASSERT_EQ(got.video.sizes(), want.video.sizes()) << what;
  ASSERT_EQ(got.audio.sizes(), want.audio.sizes()) << what;
  const double ev = models::RelativeError(got.video, want.video);
  const double ea = models::RelativeError(got.audio, want.audio);
  EXPECT_LE(ev, kTol) << what << ": video latents";
  EXPECT_LE(ea, kTol) << what << ": audio latents";
  std::printf("%s: relative error video %.3g, audio %.3g\n", what.c_str(), ev, ea);
}

// Every branch live in both streams, different scales per stream, rescale on.
Case AllBranches(uint64_t seed) {
  Case c;
  c.seed = seed;
  c.guidance.video = {3.0, 1.0, 3.0, 0.7};
  c.guidance.audio = {7.0, 0.5, 2.0, 0.4};
  c.guidance.stg_blocks = {1};
  return c;
}

// The parity matrix: 9 frames are 2 latent frames (one per Ulysses rank); the tiny
// model's 2 heads per stream leave each rank of Ulysses 2 × tp 2 one head, so that layout takes
// the transformer's key/value all-gather path, the others the Ulysses all-to-alls.
TEST(Ltx2DenoiseGroupTest, EveryLayoutWithFourLiveBranchesMatchesOneRank) {
  const Case c = AllBranches(21);
  const v1::DenoiseRequest r = RequestOf(c);
  const Latents want = Reference(c, r);
  // Degree 3 deals 4 branches as {cond, modality}, {negative}, {perturbed}: uneven shares.
  for (int cfg : {1, 2, 3, 4}) {
    for (int ulysses : {1, 2}) {
      for (int tp : {1, 2}) {
        const ParallelConfig layout = Layout(cfg, ulysses, tp);
        const bool streamed = cfg == 2 && ulysses == 2 && tp == 2;
        ExpectMatches(RunGroup(layout, r, streamed), want, Name(layout));
      }
    }
  }
}

// Ring attention over the video frames: ring 2 alone, with tp 2 and with CFG 2 on 9 frames (one
// latent frame per ring rank), and Ulysses 2 × ring 2, which shards 4 ways: 9 frames (2 latent
// frames) are refused, naming 25 (4 latent frames, one per shard; the tiny model's 2 heads take
// the Ulysses all-to-all inside each ring block), which then matches one rank. Few groups: each
// costs more than its two steps.
TEST(Ltx2DenoiseGroupTest, RingLayoutsMatchOneRank) {
  const Case c = AllBranches(21);
  v1::DenoiseRequest r = RequestOf(c);
  const Latents want = Reference(c, r);
  for (const ParallelConfig& layout :
       {Layout(1, 1, 1, 2), Layout(1, 1, 2, 2), Layout(2, 1, 1, 2)}) {
    ExpectMatches(RunGroup(layout, r), want, Name(layout));
  }
  v1::DenoiseRequest r25 = r;
  r25.set_num_frames(25);
  const Latents want25 = Reference(c, r25);
  const ParallelConfig usp = Layout(1, 2, 1, 2);
  RunRanks(usp, [&](DenoiseCore& core) {
    CallContext ctx;
    absl::Status s = core.Denoise(ctx, r, [](const v1::DenoiseEvent&) {});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("2 latent frames, which do not divide by the sequence-parallel "
                               "degree 4 (ulysses 2 × ring 2)"),
              std::string::npos)
        << s;
    EXPECT_NE(s.message().find("nearest: 25"), std::string::npos) << s;
    testing::DenoiseOutputs events;
    s = core.Denoise(ctx, r25, [&](const v1::DenoiseEvent& e) { events.Add(e); });
    ASSERT_TRUE(s.ok()) << s;
    ExpectMatches(LatentsOf(events), want25, Name(usp) + ", 25 frames");
  });
}

TEST(Ltx2DenoiseGroupTest, RanksBeyondTheLiveBranchesIdle) {
  // stg 0 and modality 1 in both streams: cond and negative only; degree 4 leaves two ranks idle.
  Case c;
  c.seed = 8;
  c.guidance.video = {4.0, 0.0, 1.0, 0.5};
  c.guidance.audio = {2.0, 0.0, 1.0, 0.0};
  c.guidance.stg_blocks = {0};  // given, but the perturbed branch is off (stg 0)
  c.negative_tokens = 3;
  const v1::DenoiseRequest r = RequestOf(c);
  const Latents want = Reference(c, r);
  ExpectMatches(RunGroup(Layout(4), r), want, "cfg 4, 2 live branches");
  // Two idle ulysses × tp blocks: they run no sharded forward either.
  ExpectMatches(RunGroup(Layout(4, 2, 1), r), want, "cfg 4 × ulysses 2, 2 live branches");
  // Guidance off: only cond runs; rank 1 idles.
  Case off;
  off.seed = 9;
  const v1::DenoiseRequest r_off = RequestOf(off);
  ExpectMatches(RunGroup(Layout(2), r_off), Reference(off, r_off), "cfg 2, 1 live branch");
}

TEST(Ltx2DenoiseGroupTest, SkipStepGuidanceOnEveryRank) {
  // Steps 1 and 3 reuse the guided x0 of steps 0 and 2 on every rank.
  Case c = AllBranches(33);
  c.guidance.skip_step = 1;
  c.steps = 4;
  const v1::DenoiseRequest r = RequestOf(c);
  ExpectMatches(RunGroup(Layout(3, 2), r), Reference(c, r), "cfg 3 × ulysses 2, skip_step 1");
}

TEST(Ltx2DenoiseGroupTest, RankZeroDecodesAndStreamsTheOutput) {
  // RAW: frames and waveform come back from rank 0 (the workers have no output path at all).
  Case c = AllBranches(5);
  v1::DenoiseRequest r = RequestOf(c);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_RAW);
  RunRanks(Layout(3, 1, 2), [&](DenoiseCore& core) {
    CallContext ctx;
    testing::DenoiseOutputs events;
    absl::Status s = core.Denoise(ctx, r, [&](const v1::DenoiseEvent& e) { events.Add(e); });
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_TRUE(events.have_result && events.broken.ok()) << events.broken;
    EXPECT_EQ(events.steps, r.steps());
    ASSERT_EQ(events.outputs.size(), 2u);
    const v1::Output* frames = events.Find("frames");
    ASSERT_NE(frames, nullptr);
    auto f = testing::TensorOf(*frames);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->sizes(), (std::vector<int64_t>{r.num_frames(), r.height(), r.width(), 3}));
    const v1::Output* audio = events.Find("audio");
    ASSERT_NE(audio, nullptr);
    auto a = testing::TensorOf(*audio);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_GT(a->numel(), 0);
    EXPECT_TRUE(at::isfinite(*a).all().item<bool>());
    EXPECT_GT(events.result.vae_decode_seconds(), 0.0);
  });
}

TEST(Ltx2DenoiseGroupTest, ImageToVideoOnEveryAxisMatchesOneRank) {
  // A first-frame image: every rank encodes it, the conditioned frame (per-token timestep 0)
  // sits on Ulysses rank 0 only.
  const Case c = AllBranches(12);
  v1::DenoiseRequest r = RequestOf(c);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor image = at::randint(0, 256, {40, 50, 3}, gen, at::kByte).contiguous();
  auto png = EncodePng(image.data_ptr<uint8_t>(), 50, 40);
  ASSERT_TRUE(png.ok()) << png.status();
  v1::InputMedia* in = r.add_inputs();
  in->set_role(v1::MEDIA_ROLE_FIRST_FRAME);
  in->set_data(*png);
  const Latents want = RunGroup(Layout(1), r);
  ExpectMatches(RunGroup(Layout(2, 2, 2), r), want, "image-to-video, cfg 2 × ulysses 2 × tp 2");
}

TEST(Ltx2DenoiseGroupTest, RefusesTpThatDoesNotDivideTheHeads) {
  for (int ring : {1, 2}) {
    DenoiseCore::Options o;
    o.model = kModel;
    o.parallel.cfg = 2;
    o.parallel.ring = ring;
    o.parallel.tp = 4;
    o.rendezvous.world_size = o.parallel.world();
    // Refused before the rendezvous: this returns at once although no other rank exists.
    auto core = DenoiseCore::Create(o);
    EXPECT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(core.status().message().find("parallel: tp 4 does not divide"), std::string::npos)
        << core.status();
  }
}

TEST(Ltx2DenoiseGroupTest, LatentFramesMustDivideByTheSequenceParallelDegree) {
  // 17 frames are 3 latent frames: not shardable over 2 Ulysses ranks; 9 (2 latent frames) and
  // 25 (4) are equally near, the smaller is named. Refused on rank 0 before the group runs it.
  // (Ulysses × ring: RingLayoutsMatchOneRank.)
  Case c;
  v1::DenoiseRequest r = RequestOf(c);
  r.set_num_frames(17);
  RunRanks(Layout(1, 2), [&](DenoiseCore& core) {
    CallContext ctx;
    absl::Status s = core.Denoise(ctx, r, [](const v1::DenoiseEvent&) {});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("num_frames: 17 makes 3 latent frames"), std::string::npos) << s;
    EXPECT_NE(s.message().find("sequence-parallel degree 2 (ulysses 2 × ring 1)"),
              std::string::npos)
        << s;
    EXPECT_NE(s.message().find("nearest: 9"), std::string::npos) << s;
    // The group still serves the next request.
    r.set_num_frames(9);
    testing::DenoiseOutputs events;
    s = core.Denoise(ctx, r, [&](const v1::DenoiseEvent& e) { events.Add(e); });
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_TRUE(events.have_result);
  });
}

}  // namespace
}  // namespace diffmesh
