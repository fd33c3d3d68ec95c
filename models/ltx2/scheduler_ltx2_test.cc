#include "models/ltx2/scheduler.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <regex>
#include <string>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "models/core/config_json.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/weights.h"

namespace diffmesh::models::ltx2 {
namespace {

std::string SourceDir() {
  const char* dir = std::getenv("DIFFMESH_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

class SchedulerFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = FixturePath("ltx2-ref-a/" + GetParam());
    auto file = SafetensorsFile::Open(dir + "/scheduler_io.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    io_ = std::move(*file);
    config_path_ = dir + "/scheduler/scheduler_config.json";
  }

  at::Tensor Tensor(const std::string& name) const {
    auto it = io_->tensors().find(name);
    EXPECT_NE(it, io_->tensors().end()) << name;
    return it == io_->tensors().end() ? at::Tensor() : ToTensor(it->second);
  }

  std::unique_ptr<SafetensorsFile> io_;
  std::string config_path_;
};

// Every stepsN.tokensT entry of the file: the pipeline's mu, sigmas and timesteps.
TEST_P(SchedulerFixtureTest, PipelineSchedulesMatchReference) {
  auto scheduler = FlowMatchEulerScheduler::Load(config_path_);
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  auto mu_it = io_->metadata().find("mu");
  ASSERT_NE(mu_it, io_->metadata().end());
  const nlohmann::json mus = nlohmann::json::parse(mu_it->second);

  const std::regex key_re(R"(steps(\d+)\.tokens(\d+)\.sigmas)");
  int cases = 0;
  for (const auto& [name, view] : io_->tensors()) {
    std::smatch m;
    if (!std::regex_match(name, m, key_re)) continue;
    const int64_t steps = std::stoll(m[1]), tokens = std::stoll(m[2]);
    const std::string prefix = "steps" + m[1].str() + ".tokens" + m[2].str();
    SCOPED_TRACE(prefix);
    ++cases;
    ASSERT_TRUE(mus.contains(prefix + ".mu"));
    const double want_mu = mus[prefix + ".mu"].get<double>();
    EXPECT_NEAR(CalculateShift(tokens, (*scheduler)->config()), want_mu, 1e-12);

    ASSERT_TRUE((*scheduler)->SetPipelineSchedule(steps, tokens).ok());
    at::Tensor want_sigmas = ToTensor(view);
    at::Tensor want_timesteps = Tensor(prefix + ".timesteps");
    ASSERT_EQ((*scheduler)->sigmas_tensor().sizes(), want_sigmas.sizes());
    ASSERT_EQ((*scheduler)->timesteps_tensor().sizes(), want_timesteps.sizes());
    const double sig_err = RelativeError((*scheduler)->sigmas_tensor(), want_sigmas);
    const double ts_err = RelativeError((*scheduler)->timesteps_tensor(), want_timesteps);
    const double sig_abs = MaxAbsDiff((*scheduler)->sigmas_tensor(), want_sigmas);
    std::cout << GetParam() << " " << prefix << ": sigmas rel err " << sig_err << " (max abs "
              << sig_abs << "), timesteps rel err " << ts_err << "\n";
    EXPECT_LE(sig_err, 1e-6);
    EXPECT_LE(ts_err, 1e-6);
    // float32 throughout, op by op as numpy: at most one ulp of 1.0.
    EXPECT_LE(sig_abs, 1.2e-7);

    // The same through explicit sigmas.
    ASSERT_TRUE((*scheduler)->SetSigmas(DefaultPipelineSigmas(steps), want_mu).ok());
    EXPECT_LE(MaxAbsDiff((*scheduler)->sigmas_tensor(), want_sigmas), 1.2e-7);
  }
  EXPECT_GT(cases, 0) << "no stepsN.tokensT.sigmas entries";
}

TEST_P(SchedulerFixtureTest, EulerStepMatchesReference) {
  auto scheduler = FlowMatchEulerScheduler::Load(config_path_);
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  // Metadata: "... with steps=S, tokens=T -> step.prev_sample".
  auto it = io_->metadata().find("step");
  ASSERT_NE(it, io_->metadata().end());
  std::smatch m;
  ASSERT_TRUE(std::regex_search(it->second, m, std::regex(R"(steps=(\d+), tokens=(\d+))")))
      << it->second;
  ASSERT_TRUE((*scheduler)->SetPipelineSchedule(std::stoll(m[1]), std::stoll(m[2])).ok());
  at::Tensor prev = (*scheduler)->Step(Tensor("step.model_output"), 0, Tensor("step.sample"));
  const double err = RelativeError(prev, Tensor("step.prev_sample"));
  std::cout << GetParam() << " euler step rel err " << err << "\n";
  EXPECT_LE(err, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Variants, SchedulerFixtureTest, ::testing::Values("v20", "v23"));

// Lightricks' LTX2Scheduler.execute, recorded by testdata/make_official_sigmas.py.
TEST(OfficialSigmasTest, MatchesRecordedReference) {
  auto json = ReadJsonFile(SourceDir() + "/models/ltx2/testdata/official_sigmas.json");
  ASSERT_TRUE(json.ok()) << json.status();
  int cases = 0;
  double worst = 0.0;
  for (const auto& c : (*json)["cases"]) {
    const int64_t steps = c["steps"].get<int64_t>();
    std::optional<int64_t> tokens;
    if (!c["tokens"].is_null()) tokens = c["tokens"].get<int64_t>();
    OfficialScheduleOptions options;
    options.stretch = c["stretch"].get<bool>();
    std::vector<float> got = OfficialSigmas(steps, tokens, options);
    const std::vector<double> want = c["sigmas"].get<std::vector<double>>();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]));
    }
    if (options.stretch) {
      EXPECT_NEAR(got[got.size() - 2], options.terminal, 1e-6);
    }
    EXPECT_EQ(got.back(), 0.0f);
    ++cases;
  }
  std::cout << "official LTX2Scheduler sigmas: " << cases << " cases, max abs diff " << worst
            << "\n";
  EXPECT_GT(cases, 0);
  EXPECT_LE(worst, 1.2e-7);
}

TEST(OfficialSigmasTest, NoTokenCountMeansMaxShift) {
  // Without a latent the shift is max_shift: a token count of 4096 gives the same schedule, a
  // larger one a later (higher) schedule.
  EXPECT_EQ(OfficialSigmas(30, std::nullopt), OfficialSigmas(30, 4096));
  std::vector<float> big = OfficialSigmas(30, 24576);
  std::vector<float> fixed = OfficialSigmas(30, std::nullopt);
  EXPECT_GT(big[15], fixed[15]);
}

TEST(FullScheduleTest, EulerUsesGivenSigmas) {
  auto scheduler = FlowMatchEulerScheduler::FromJson(nlohmann::json::object());
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  const std::vector<float> sigmas = OfficialSigmas(8, std::nullopt);
  ASSERT_TRUE((*scheduler)->SetFullSchedule(sigmas).ok());
  EXPECT_EQ((*scheduler)->num_steps(), 8);
  EXPECT_EQ((*scheduler)->timesteps()[0], sigmas[0] * 1000.0f);
  auto gen = at::detail::createCPUGenerator(11);
  at::Tensor x = at::randn({2, 5, 3}, gen), v = at::randn({2, 5, 3}, gen);
  at::Tensor y = x;
  for (int64_t i = 0; i < 8; ++i) y = (*scheduler)->Step(v, i, y);
  // A constant velocity integrates to x − σ0·v (the terminal sigma is 0).
  EXPECT_LE(RelativeError(y, x - sigmas[0] * v), 1e-6);
  EXPECT_EQ((*scheduler)->SetFullSchedule({1.0f}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SchedulerConfigTest, RejectsUnsupportedOptions) {
  EXPECT_EQ(SchedulerConfig::FromJson(nlohmann::json::parse(R"({"use_karras_sigmas": true})"))
                .status()
                .code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(SchedulerConfig::FromJson(nlohmann::json::parse(R"({"time_shift_type": "cubic"})"))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto plain = SchedulerConfig::FromJson(nlohmann::json::parse(R"({"shift_terminal": null})"));
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->shift_terminal.has_value());
}

TEST(SchedulerTest, DynamicShiftingNeedsMu) {
  auto scheduler = FlowMatchEulerScheduler::FromJson(
      nlohmann::json::parse(R"({"use_dynamic_shifting": true})"));
  ASSERT_TRUE(scheduler.ok());
  EXPECT_EQ((*scheduler)->SetSigmas({1.0, 0.5}, std::nullopt).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace diffmesh::models::ltx2
