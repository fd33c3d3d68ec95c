#include "services/denoise/denoise_core.h"

#include <functional>
#include <random>
#include <thread>

#include "common/image/png.h"
#include "common/media/image_codec.h"
#include "common/tensor/wire_tensor.h"
#include "common/tensor/testing/random_tensor.h"
#include "gtest/gtest.h"
#include "services/denoise/testing/denoise_outputs.h"
#include "services/denoise/testing/streamed_inputs.h"

namespace diffmesh {
namespace {

v1::DenoiseRequest Request(int size, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  v1::DenoiseRequest r;
  r.set_model("glm-image-tiny");
  r.set_height(size);
  r.set_width(size);
  r.set_steps(3);
  r.mutable_guidance()->mutable_main()->set_cfg_scale(1.5f);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_PNG);
  r.set_seed(seed);
  const int g = size / 32;
  std::vector<int64_t> grid(g * g);
  for (auto& t : grid) t = static_cast<int64_t>(rng() % 256);
  *r.mutable_prior_tokens() = MakeTensor(DType::kInt64, {g, g}, grid.data(), grid.size() * 8);
  *r.mutable_prompt_embeds() = testing::RandomFloats({1, 5, 64}, rng);
  *r.mutable_negative_prompt_embeds() = testing::RandomFloats({1, 1, 64}, rng);
  return r;
}

struct Outcome {
  absl::Status status;
  int steps = 0;
  testing::DenoiseOutputs events;
  // The bytes of the output named `name` ("" when there is none).
  std::string Data(const std::string& name) const {
    const v1::Output* out = events.Find(name);
    return out != nullptr ? out->data() : "";
  }
  std::string png() const { return Data("image"); }
  std::string latents() const { return Data("latents"); }
};

class DenoiseCoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto core = DenoiseCore::Create({});
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = core->release();
  }
  static void TearDownTestSuite() { delete core_; }

  static Outcome Run(const v1::DenoiseRequest& r, CallContext* ctx = nullptr) {
    Outcome o;
    CallContext local;
    o.status = core_->Denoise(ctx ? *ctx : local, r, [&](const v1::DenoiseEvent& e) {
      if (e.has_progress()) {
        EXPECT_EQ(e.progress().done(), ++o.steps);
        EXPECT_EQ(e.progress().total(), r.steps());
      }
      o.events.Add(e);
    });
    return o;
  }
  static DenoiseCore* core_;
};
DenoiseCore* DenoiseCoreTest::core_ = nullptr;

TEST_F(DenoiseCoreTest, ProducesAPngOfTheRequestedSizeDeterministically) {
  v1::DenoiseRequest r = Request(128, 11);
  r.set_width(192);
  std::vector<int64_t> grid(4 * 6, 3);
  *r.mutable_prior_tokens() = MakeTensor(DType::kInt64, {4, 6}, grid.data(), grid.size() * 8);
  Outcome a = Run(r), b = Run(r);
  ASSERT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(a.steps, 3);
  auto img = DecodePng(a.png());
  ASSERT_TRUE(img.ok());
  EXPECT_EQ(img->height, 128);
  EXPECT_EQ(img->width, 192);
  const v1::Output* image = a.events.Find("image");
  ASSERT_NE(image, nullptr);
  EXPECT_EQ(image->info().kind(), v1::OUTPUT_KIND_IMAGE);
  EXPECT_EQ(image->info().width(), 192);
  EXPECT_EQ(image->info().mime_type(), "image/png");
  EXPECT_EQ(a.png(), b.png());
  r.set_seed(12);
  EXPECT_NE(Run(r).png(), a.png());
}

TEST_F(DenoiseCoreTest, RawOutputIsTheDecodedPngsPixels) {
  v1::DenoiseRequest r = Request(64, 13);
  Outcome png = Run(r);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_RAW);
  Outcome raw = Run(r);
  ASSERT_TRUE(raw.status.ok()) << raw.status;
  const v1::Output* frames = raw.events.Find("frames");
  ASSERT_NE(frames, nullptr);
  EXPECT_EQ(frames->info().tensor_dtype(), v1::UINT8);
  EXPECT_EQ(std::vector<int64_t>(frames->info().tensor_shape().begin(),
                                 frames->info().tensor_shape().end()),
            (std::vector<int64_t>{1, 64, 64, 3}));
  auto img = DecodePng(png.png());
  ASSERT_TRUE(img.ok());
  EXPECT_EQ(frames->data(), std::string(img->pixels.begin(), img->pixels.end()));
}

TEST_F(DenoiseCoreTest, JpegAndWebpOutputsDecodeToTheImage) {
  v1::DenoiseRequest r = Request(64, 14);
  auto png = DecodePng(Run(r).png());
  ASSERT_TRUE(png.ok());
  for (auto [format, mime] : {std::pair{v1::OUTPUT_FORMAT_JPEG, "image/jpeg"},
                              std::pair{v1::OUTPUT_FORMAT_WEBP, "image/webp"}}) {
    r.mutable_output()->set_format(format);
    r.mutable_output()->set_quality(100);
    Outcome o = Run(r);
    ASSERT_TRUE(o.status.ok()) << o.status;
    ASSERT_EQ(o.events.outputs.size(), 1u);
    EXPECT_EQ(o.events.outputs[0].info().mime_type(), mime);
    auto img = media::DecodeImage(o.events.outputs[0].data());
    ASSERT_TRUE(img.ok()) << img.status();
    ASSERT_EQ(img->pixels.size(), png->pixels.size());
    int worst = 0;
    for (size_t i = 0; i < img->pixels.size(); ++i) {
      worst = std::max(worst, std::abs(int{img->pixels[i]} - int{png->pixels[i]}));
    }
    // WebP at quality 100 is lossless; JPEG at 100 stays within a few levels.
    EXPECT_LE(worst, format == v1::OUTPUT_FORMAT_WEBP ? 0 : 16) << mime;
  }
}

TEST_F(DenoiseCoreTest, GuidanceAndPriorTokensChangeTheLatents) {
  v1::DenoiseRequest r = Request(64, 5);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  Outcome base = Run(r);
  ASSERT_TRUE(base.status.ok()) << base.status;
  const v1::Output* latents = base.events.Find("latents");
  ASSERT_NE(latents, nullptr);
  ASSERT_EQ(latents->info().tensor_shape_size(), 4);
  EXPECT_EQ(latents->info().tensor_dtype(), v1::FLOAT32);
  EXPECT_EQ(latents->info().tensor_shape(1), 16);
  EXPECT_EQ(latents->info().tensor_shape(2), 8);
  EXPECT_TRUE(base.png().empty());
  v1::DenoiseRequest no_cfg = r;
  no_cfg.mutable_guidance()->mutable_main()->set_cfg_scale(1.0f);
  EXPECT_NE(Run(no_cfg).latents(), base.latents());
  // Unset guidance fields are off: a request without any guidance is plain conditional.
  v1::DenoiseRequest unset = r;
  unset.clear_guidance();
  EXPECT_EQ(Run(unset).latents(), Run(no_cfg).latents());
  v1::DenoiseRequest other_prior = r;
  std::vector<int64_t> grid(4, 200);
  *other_prior.mutable_prior_tokens() = MakeTensor(DType::kInt64, {2, 2}, grid.data(), 32);
  EXPECT_NE(Run(other_prior).latents(), base.latents());
}

TEST_F(DenoiseCoreTest, BadInputsAreRejectedNamingTheField) {
  struct Case {
    std::function<void(v1::DenoiseRequest&)> edit;
    absl::StatusCode code;
    std::string field;
  };
  std::vector<Case> cases = {
      {[](auto& r) { r.set_model("x"); }, absl::StatusCode::kNotFound, "model"},
      {[](auto& r) { r.set_height(100); }, absl::StatusCode::kInvalidArgument, "height"},
      {[](auto& r) { r.set_width(4096); }, absl::StatusCode::kInvalidArgument, "width"},
      {[](auto& r) { r.set_steps(0); }, absl::StatusCode::kInvalidArgument, "steps"},
      {[](auto& r) { r.mutable_guidance()->mutable_main()->set_cfg_scale(INFINITY); },
       absl::StatusCode::kInvalidArgument, "guidance"},
      {[](auto& r) { r.mutable_guidance()->mutable_audio()->set_cfg_scale(2); },
       absl::StatusCode::kInvalidArgument, "guidance.audio"},
      {[](auto& r) { r.mutable_guidance()->mutable_stg_blocks()->add_blocks(99); },
       absl::StatusCode::kInvalidArgument, "guidance.stg_blocks"},
      {[](auto& r) { r.mutable_output()->set_format(v1::OUTPUT_FORMAT_UNSPECIFIED); },
       absl::StatusCode::kInvalidArgument, "output.format"},
      {[](auto& r) { r.mutable_output()->set_format(v1::OUTPUT_FORMAT_MP4); },
       absl::StatusCode::kInvalidArgument, "output.format"},
      {[](auto& r) { r.mutable_prior_tokens()->mutable_data()->pop_back(); }, absl::StatusCode::kInvalidArgument, "prior_tokens"},
      {[](auto& r) { r.mutable_prior_tokens()->set_shape(0, 1); r.mutable_prior_tokens()->set_shape(1, 4); }, absl::StatusCode::kInvalidArgument, "prior_tokens"},
      {[](auto& r) {
         std::vector<int64_t> g(4, 999);
         *r.mutable_prior_tokens() = MakeTensor(DType::kInt64, {2, 2}, g.data(), 32);
       }, absl::StatusCode::kInvalidArgument, "prior_tokens"},
      {[](auto& r) { r.mutable_prompt_embeds()->set_shape(2, 32); r.mutable_prompt_embeds()->set_shape(1, 10); }, absl::StatusCode::kInvalidArgument, "prompt_embeds"},
      {[](auto& r) { r.mutable_negative_prompt_embeds()->set_dtype(v1::INT32); }, absl::StatusCode::kInvalidArgument, "negative_prompt_embeds"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::DenoiseRequest r = Request(64, 1);
    cases[i].edit(r);
    Outcome o = Run(r);
    EXPECT_EQ(o.status.code(), cases[i].code) << "case " << i << ": " << o.status;
    EXPECT_EQ(o.status.message().substr(0, cases[i].field.size()), cases[i].field) << o.status;
    EXPECT_EQ(o.steps, 0);
  }
}

TEST_F(DenoiseCoreTest, CancelStopsBetweenSteps) {
  v1::DenoiseRequest r = Request(64, 2);
  r.set_steps(50);
  CallContext ctx;
  int steps = 0;
  absl::Status s = core_->Denoise(ctx, r, [&](const v1::DenoiseEvent& e) {
    if (e.has_progress() && ++steps == 2) ctx.Cancel();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(steps, 2);
}

Outcome RunStreamed(DenoiseCore& core, std::vector<v1::DenoiseInput> inputs,
                    absl::Status close = absl::OkStatus(), CallContext* ctx = nullptr) {
  InputQueue<v1::DenoiseInput> queue;
  // Fed from another thread, a little at a time, as a live stage would.
  std::thread producer([&] {
    for (auto& in : inputs) {
      queue.Push(std::move(in));
      absl::SleepFor(absl::Microseconds(200));
    }
    queue.Close(close);
  });
  Outcome o;
  CallContext local;
  o.status = core.DenoiseStreamed(ctx ? *ctx : local, queue, [&](const v1::DenoiseEvent& e) {
    if (e.has_progress()) ++o.steps;
    o.events.Add(e);
  });
  producer.join();
  return o;
}

TEST_F(DenoiseCoreTest, StreamedInputsGiveTheWholeRequestsImage) {
  const v1::DenoiseRequest whole = Request(128, 21);
  Outcome expected = Run(whole);
  ASSERT_TRUE(expected.status.ok()) << expected.status;
  for (int chunk : {1, 7, 32, 1000}) {
    Outcome got = RunStreamed(*core_, testing::StreamedInputsOf(whole, chunk));
    ASSERT_TRUE(got.status.ok()) << "chunk " << chunk << ": " << got.status;
    EXPECT_EQ(got.steps, 3);
    EXPECT_EQ(got.png(), expected.png()) << "chunk " << chunk;
  }
}

TEST_F(DenoiseCoreTest, StreamedInputsThatEndEarlyOrFailAreErrors) {
  const v1::DenoiseRequest whole = Request(128, 22);
  std::vector<v1::DenoiseInput> inputs = testing::StreamedInputsOf(whole, 16);

  std::vector<v1::DenoiseInput> short_of_tokens(inputs.begin(), inputs.end() - 2);
  Outcome o = RunStreamed(*core_, short_of_tokens);
  EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(o.status.message().find("grid tokens"), std::string::npos) << o.status;
  EXPECT_EQ(o.steps, 0);

  o = RunStreamed(*core_, short_of_tokens, absl::UnavailableError("stage 'ar': down"));
  EXPECT_EQ(o.status.code(), absl::StatusCode::kUnavailable) << o.status;

  std::vector<v1::DenoiseInput> tokens_first(inputs.begin() + 1, inputs.end());
  o = RunStreamed(*core_, tokens_first);
  EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument);

  std::vector<v1::DenoiseInput> gap = inputs;
  gap.erase(gap.begin() + 3);  // an AR chunk missing in the middle
  o = RunStreamed(*core_, gap);
  EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(o.status.message().find("offset"), std::string::npos) << o.status;

  // A bad header is refused before anything else (and the group stays usable).
  std::vector<v1::DenoiseInput> bad = inputs;
  bad[0].mutable_request()->set_steps(0);
  o = RunStreamed(*core_, bad);
  EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(RunStreamed(*core_, inputs).status.ok());
}

TEST_F(DenoiseCoreTest, CancelWhileWaitingForInputs) {
  InputQueue<v1::DenoiseInput> queue;
  queue.Push(testing::StreamedInputsOf(Request(128, 23), 16)[0]);  // the request, then nothing
  CallContext ctx;
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(50));
    ctx.Cancel();
  });
  const absl::Time t0 = absl::Now();
  absl::Status s = core_->DenoiseStreamed(ctx, queue, [](const v1::DenoiseEvent&) {});
  canceller.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
}

// A stream that sends its request and then nothing holds the group only for the idle limit;
// the next request gets the group.
TEST(DenoiseCoreIdleTest, AStalledStreamEndsAtTheIdleLimitAndFreesTheGroup) {
  DenoiseCore::Options options;
  options.stream_idle_timeout = absl::Seconds(2);
  auto core = DenoiseCore::Create(options);
  ASSERT_TRUE(core.ok()) << core.status();
  for (size_t sent : {size_t{0}, size_t{1}}) {  // nothing at all; the request only
    InputQueue<v1::DenoiseInput> queue;
    const auto inputs = testing::StreamedInputsOf(Request(64, 41), 16);
    for (size_t i = 0; i < sent; ++i) queue.Push(inputs[i]);
    CallContext ctx;
    const absl::Time t0 = absl::Now();
    absl::Status s = (*core)->DenoiseStreamed(ctx, queue, [](const v1::DenoiseEvent&) {});
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_NE(s.message().find("--stream-idle-timeout"), std::string::npos) << s;
    EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  }
  CallContext ctx;
  absl::Status s = (*core)->Denoise(ctx, Request(64, 42), [](const v1::DenoiseEvent&) {});
  EXPECT_TRUE(s.ok()) << s;
}

// The group runs one request at a time; concurrent whole and streamed requests queue for it
// and each hands it on to the next (a hand-over that lost track of the holder once made a
// later request fail with "not held" and never release the group).
TEST_F(DenoiseCoreTest, ConcurrentRequestsTakeTurnsWithTheGroup) {
  const v1::DenoiseRequest whole = Request(64, 31);
  Outcome expected = Run(whole);
  ASSERT_TRUE(expected.status.ok()) << expected.status;
  std::vector<std::thread> callers;
  std::vector<Outcome> outcomes(8);
  for (int i = 0; i < 8; ++i) {
    callers.emplace_back([&, i] {
      for (int k = 0; k < 3; ++k) {
        Outcome o = (i + k) % 2 == 0 ? Run(whole)
                                     : RunStreamed(*core_, testing::StreamedInputsOf(whole, 64));
        if (!o.status.ok() || o.png() != expected.png()) {
          outcomes[i] = o;
          return;
        }
      }
      outcomes[i] = expected;
    });
  }
  for (auto& t : callers) t.join();
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(outcomes[i].status.ok()) << "caller " << i << ": " << outcomes[i].status;
    EXPECT_EQ(outcomes[i].png(), expected.png()) << "caller " << i;
  }
}

// The group runs one request at a time. A request that comes while another holds it reports
// its wait as queue time (Result.queue_seconds): at least what the first still had to run
// when the second came, and none of it counted as denoise time.
TEST_F(DenoiseCoreTest, QueueTimeIsTheWaitForTheGroup) {
  const v1::DenoiseRequest r = Request(64, 51);
  constexpr absl::Duration kHeld = absl::Milliseconds(600);
  Outcome first, second;
  absl::Time second_called;
  std::thread later;
  CallContext ctx;
  // At its first step the first request (holding the group) starts the second, then keeps
  // the group kHeld longer: its event callback runs inside its run.
  first.status = core_->Denoise(ctx, r, [&](const v1::DenoiseEvent& e) {
    if (e.has_progress() && e.progress().done() == 1) {
      later = std::thread([&] {
        second_called = absl::Now();
        second = Run(r);
      });
      absl::SleepFor(kHeld);
    }
    first.events.Add(e);
  });
  const absl::Time first_done = absl::Now();
  ASSERT_TRUE(later.joinable());
  later.join();
  ASSERT_TRUE(first.status.ok()) << first.status;
  ASSERT_TRUE(second.status.ok()) << second.status;
  ASSERT_TRUE(first.events.have_result && second.events.have_result);
  const double first_left = absl::ToDoubleSeconds(first_done - second_called);
  const double queued = second.events.result.queue_seconds();
  EXPECT_GE(first_left, absl::ToDoubleSeconds(kHeld));
  // Waited for all the first had left, but for checking its own request (milliseconds).
  EXPECT_GE(queued, first_left - 0.25) << "first had " << first_left << " s left";
  EXPECT_GE(queued, absl::ToDoubleSeconds(kHeld) / 2);
  EXPECT_LE(queued, first_left + 0.05);
  // The first found the group free; the second's denoise time is its own steps only.
  EXPECT_LT(first.events.result.queue_seconds(), absl::ToDoubleSeconds(kHeld) / 2);
  EXPECT_LT(second.events.result.denoise_seconds(), first.events.result.denoise_seconds());
}

// A request's deadline bounds its wait for the group too.
TEST_F(DenoiseCoreTest, TheDeadlineEndsTheWaitForTheGroup) {
  const v1::DenoiseRequest r = Request(64, 52);
  absl::Status waited;
  absl::Duration took;
  std::thread later;
  CallContext ctx;
  absl::Status first = core_->Denoise(ctx, r, [&](const v1::DenoiseEvent& e) {
    if (e.has_progress() && e.progress().done() == 1) {
      later = std::thread([&] {
        CallContext short_ctx(absl::Now() + absl::Milliseconds(200));
        const absl::Time t0 = absl::Now();
        waited = core_->Denoise(short_ctx, r, [](const v1::DenoiseEvent&) {});
        took = absl::Now() - t0;
      });
      later.join();  // the group stays held meanwhile
    }
  });
  EXPECT_TRUE(first.ok()) << first;
  EXPECT_EQ(waited.code(), absl::StatusCode::kDeadlineExceeded) << waited;
  EXPECT_NE(waited.message().find("waited for the denoise group"), std::string::npos) << waited;
  EXPECT_LT(took, absl::Seconds(5));
}

// An edit request: `whole` plus a random condition image of size×size and its prior grid.
v1::DenoiseRequest EditRequest(v1::DenoiseRequest whole, int size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> rgb(static_cast<size_t>(size) * size * 3);
  for (auto& v : rgb) v = static_cast<uint8_t>(rng());
  v1::InputMedia* in = whole.add_inputs();
  in->set_role(v1::MEDIA_ROLE_EDIT_IMAGE);
  in->set_data(*EncodePng(rgb.data(), size, size));
  const int g = size / 32;  // the AR grid of the image: ×2 is its DiT patch grid
  std::vector<int64_t> grid(g * g);
  for (auto& t : grid) t = static_cast<int64_t>(rng() % 256);
  *whole.add_condition_prior_tokens() = MakeTensor(DType::kInt64, {g, g}, grid.data(), grid.size() * 8);
  return whole;
}

TEST_F(DenoiseCoreTest, AnEditRequestConditionsOnItsImage) {
  const v1::DenoiseRequest text = Request(64, 41);
  const v1::DenoiseRequest edit = EditRequest(text, 64, 5);
  Outcome plain = Run(text), a = Run(edit), b = Run(edit);
  ASSERT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(a.png(), b.png());
  EXPECT_NE(a.png(), plain.png());
  EXPECT_NE(Run(EditRequest(text, 64, 6)).png(), a.png());  // another image, another result
  // Streamed like the orchestrator does: the AR chunks carry the condition grid.
  std::vector<v1::DenoiseInput> inputs = testing::StreamedInputsOf(edit, 7);
  ASSERT_TRUE(inputs[0].request().inputs_size() == 1);
  inputs[0].mutable_request()->clear_condition_prior_tokens();
  *inputs[1].mutable_ar_tokens()->mutable_condition_prior_tokens() = edit.condition_prior_tokens();
  Outcome streamed = RunStreamed(*core_, inputs);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status;
  EXPECT_EQ(streamed.png(), a.png());
}

TEST_F(DenoiseCoreTest, EditInputsThatDoNotFitAreRejected) {
  const v1::DenoiseRequest edit = EditRequest(Request(64, 42), 64, 5);
  v1::DenoiseRequest no_grid = edit;
  no_grid.clear_condition_prior_tokens();
  EXPECT_EQ(Run(no_grid).status.code(), absl::StatusCode::kInvalidArgument);
  v1::DenoiseRequest garbage = edit;
  garbage.mutable_inputs(0)->set_data("GIF89a");
  Outcome o = Run(garbage);
  EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(o.status.message().substr(0, 14), "inputs[0].data") << o.status;
  v1::DenoiseRequest wrong_grid = edit;
  std::vector<int64_t> grid(9, 1);
  *wrong_grid.mutable_condition_prior_tokens(0) = MakeTensor(DType::kInt64, {3, 3}, grid.data(), 72);
  EXPECT_EQ(Run(wrong_grid).status.code(), absl::StatusCode::kInvalidArgument);
}

// The "decode" stage kind: a decode call on the latents of a LATENTS call gives the PNG the
// denoise call makes itself, byte for byte — beside rank 0 and in a --role decode service.
TEST_F(DenoiseCoreTest, ADecodeStageOnTheLatentsGivesTheSameImage) {
  v1::DenoiseRequest r = Request(128, 21);
  Outcome direct = Run(r);
  ASSERT_TRUE(direct.status.ok()) << direct.status;
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  Outcome latents = Run(r);
  ASSERT_TRUE(latents.status.ok()) << latents.status;
  const v1::Output* l = latents.events.Find("latents");
  ASSERT_NE(l, nullptr);
  v1::DenoiseRequest decode;
  decode.set_model("glm-image-tiny");
  decode.mutable_decode();
  decode.set_height(128);
  decode.set_width(128);
  decode.mutable_output()->set_format(v1::OUTPUT_FORMAT_PNG);
  v1::Tensor* t = decode.mutable_latents()->mutable_image_latents();
  t->set_dtype(l->info().tensor_dtype());
  *t->mutable_shape() = l->info().tensor_shape();
  t->set_data(l->data());
  DenoiseCore::Options decode_only;
  decode_only.role = DenoiseCore::Options::Role::kDecode;
  auto decoder = DenoiseCore::Create(decode_only);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  for (DenoiseCore* core : {core_, decoder->get()}) {
    testing::DenoiseOutputs out;
    CallContext ctx;
    ASSERT_TRUE(core->Denoise(ctx, decode, [&](const v1::DenoiseEvent& e) { out.Add(e); }).ok());
    ASSERT_NE(out.Find("image"), nullptr);
    EXPECT_EQ(out.Find("image")->data(), direct.png());
    EXPECT_GT(out.result.vae_decode_seconds(), 0.0);
  }
  for (auto [edit, field] :
       std::vector<std::pair<std::function<void(v1::DenoiseRequest&)>, std::string>>{
           {[](auto& d) { d.set_width(256); }, "latents.image_latents"},
           {[](auto& d) { d.mutable_latents()->clear_image_latents(); }, "latents.image_latents"},
           {[](auto& d) { d.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS); },
            "output.format"},
           {[](auto& d) { d.mutable_output()->set_quality(50); }, "output.quality"},
           {[](auto& d) { d.set_height(1 << 20); }, "height"}}) {
    v1::DenoiseRequest bad = decode;
    edit(bad);
    CallContext ctx;
    absl::Status st = (*decoder)->Denoise(ctx, bad, [](const v1::DenoiseEvent&) {});
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_EQ(st.message().substr(0, field.size()), field) << st;
  }
  CallContext ctx;
  EXPECT_EQ((*decoder)->Denoise(ctx, Request(64, 1), [](const v1::DenoiseEvent&) {}).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace diffmesh
