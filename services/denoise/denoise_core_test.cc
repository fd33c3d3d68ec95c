#include "services/denoise/denoise_core.h"

#include <random>
#include <thread>

#include "common/image/png.h"
#include "common/tensor/wire_tensor.h"
#include "common/tensor/testing/random_tensor.h"
#include "gtest/gtest.h"
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
  r.set_guidance_scale(1.5f);
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
  v1::DenoiseEvent::Result result;
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
      if (e.has_step()) {
        EXPECT_EQ(e.step().step(), ++o.steps);
        EXPECT_EQ(e.step().total_steps(), r.steps());
      }
      if (e.has_result()) o.result = e.result();
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
  auto img = DecodePng(a.result.png());
  ASSERT_TRUE(img.ok());
  EXPECT_EQ(img->height, 128);
  EXPECT_EQ(img->width, 192);
  EXPECT_EQ(a.result.png(), b.result.png());
  r.set_seed(12);
  EXPECT_NE(Run(r).result.png(), a.result.png());
}

TEST_F(DenoiseCoreTest, GuidanceAndPriorTokensChangeTheLatents) {
  v1::DenoiseRequest r = Request(64, 5);
  r.set_output(v1::LATENTS);
  Outcome base = Run(r);
  ASSERT_TRUE(base.status.ok()) << base.status;
  ASSERT_TRUE(ValidateTensor(base.result.latents(), "latents", DType::kFloat32, 4).ok());
  EXPECT_EQ(base.result.latents().shape(1), 16);
  EXPECT_EQ(base.result.latents().shape(2), 8);
  EXPECT_TRUE(base.result.png().empty());
  v1::DenoiseRequest no_cfg = r;
  no_cfg.set_guidance_scale(1.0f);
  EXPECT_NE(Run(no_cfg).result.latents().data(), base.result.latents().data());
  v1::DenoiseRequest other_prior = r;
  std::vector<int64_t> grid(4, 200);
  *other_prior.mutable_prior_tokens() = MakeTensor(DType::kInt64, {2, 2}, grid.data(), 32);
  EXPECT_NE(Run(other_prior).result.latents().data(), base.result.latents().data());
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
      {[](auto& r) { r.set_guidance_scale(INFINITY); }, absl::StatusCode::kInvalidArgument, "guidance_scale"},
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
    if (e.has_step() && ++steps == 2) ctx.Cancel();
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
    if (e.has_step()) ++o.steps;
    if (e.has_result()) o.result = e.result();
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
    EXPECT_EQ(got.result.png(), expected.result.png()) << "chunk " << chunk;
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
        if (!o.status.ok() || o.result.png() != expected.result.png()) {
          outcomes[i] = o;
          return;
        }
      }
      outcomes[i].status = absl::OkStatus();
      outcomes[i].result = expected.result;
    });
  }
  for (auto& t : callers) t.join();
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(outcomes[i].status.ok()) << "caller " << i << ": " << outcomes[i].status;
    EXPECT_EQ(outcomes[i].result.png(), expected.result.png()) << "caller " << i;
  }
}

}  // namespace
}  // namespace diffmesh
