#include "models/glm_image/scheduler.h"

#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"

namespace diffmesh::models::glm_image {
namespace {

// Rounds to the storage type. Keeps a·b + c from being contracted into an FMA, so every
// operation rounds exactly as numpy/torch round it.
template <typename T>
T Rounded(T x) {
  volatile T v = x;
  return v;
}

template <typename T>
absl::Status Read(const nlohmann::json& json, const char* key, T* out) {
  return ReadConfigField(json, "scheduler", key, *out);
}

}  // namespace

absl::StatusOr<SchedulerConfig> SchedulerConfig::FromJson(const nlohmann::json& json) {
  if (!json.is_object()) return absl::InvalidArgumentError("scheduler config: not an object");
  SchedulerConfig c;
  RETURN_IF_ERROR(Read(json, "num_train_timesteps", &c.num_train_timesteps));
  RETURN_IF_ERROR(Read(json, "shift", &c.shift));
  RETURN_IF_ERROR(Read(json, "use_dynamic_shifting", &c.use_dynamic_shifting));
  RETURN_IF_ERROR(Read(json, "base_shift", &c.base_shift));
  RETURN_IF_ERROR(Read(json, "max_shift", &c.max_shift));
  RETURN_IF_ERROR(Read(json, "base_image_seq_len", &c.base_image_seq_len));
  RETURN_IF_ERROR(Read(json, "max_image_seq_len", &c.max_image_seq_len));
  RETURN_IF_ERROR(Read(json, "invert_sigmas", &c.invert_sigmas));
  double terminal = 0.0;
  auto it = json.find("shift_terminal");
  if (it != json.end() && !it->is_null()) {
    RETURN_IF_ERROR(Read(json, "shift_terminal", &terminal));
    c.shift_terminal = terminal;
  }
  RETURN_IF_ERROR(Read(json, "use_karras_sigmas", &c.use_karras_sigmas));
  RETURN_IF_ERROR(Read(json, "use_exponential_sigmas", &c.use_exponential_sigmas));
  RETURN_IF_ERROR(Read(json, "use_beta_sigmas", &c.use_beta_sigmas));
  RETURN_IF_ERROR(Read(json, "time_shift_type", &c.time_shift_type));
  RETURN_IF_ERROR(Read(json, "stochastic_sampling", &c.stochastic_sampling));
  if (c.time_shift_type != "exponential" && c.time_shift_type != "linear") {
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler config: time_shift_type must be 'exponential' or 'linear', got '",
                     c.time_shift_type, "'"));
  }
  if (c.num_train_timesteps <= 0) {
    return absl::InvalidArgumentError("scheduler config: num_train_timesteps must be positive");
  }
  return c;
}

absl::StatusOr<SchedulerConfig> SchedulerConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

double CalculateShift(int64_t image_seq_len, int64_t base_seq_len, double base_shift,
                      double max_shift) {
  const double m = std::pow(static_cast<double>(image_seq_len) / base_seq_len, 0.5);
  return Rounded(m * max_shift) + base_shift;
}

double CalculateShift(int64_t image_seq_len, const SchedulerConfig& config) {
  return CalculateShift(image_seq_len, config.base_image_seq_len, config.base_shift,
                        config.max_shift);
}

absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> FlowMatchEulerScheduler::Create(
    const SchedulerConfig& config) {
  if (config.use_karras_sigmas || config.use_exponential_sigmas || config.use_beta_sigmas) {
    return absl::UnimplementedError(
        "FlowMatchEulerScheduler: karras/exponential/beta sigmas are not supported");
  }
  if (config.stochastic_sampling) {
    return absl::UnimplementedError("FlowMatchEulerScheduler: stochastic_sampling not supported");
  }
  return std::unique_ptr<FlowMatchEulerScheduler>(new FlowMatchEulerScheduler(config));
}

absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> FlowMatchEulerScheduler::Load(
    const std::string& path) {
  ASSIGN_OR_RETURN(SchedulerConfig config, SchedulerConfig::FromFile(path));
  return Create(config);
}

absl::Status FlowMatchEulerScheduler::SetTimesteps(int64_t num_steps, std::optional<double> mu) {
  if (num_steps <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_steps must be positive, got ", num_steps));
  }
  // np.linspace(num_train, 1.0, num_steps + 1) in float64: start + i·step, each op rounded;
  // the last point (exactly 1.0) is dropped. Then .astype(int64) (truncation) → float32.
  const double start = static_cast<double>(config_.num_train_timesteps);
  const double delta = 1.0 - start;
  const double step = delta / static_cast<double>(num_steps);
  const float num_train = static_cast<float>(config_.num_train_timesteps);
  std::vector<float> sigmas(num_steps);
  for (int64_t i = 0; i < num_steps; ++i) {
    const double di = static_cast<double>(i);
    const double offset = step == 0.0 ? Rounded(di / num_steps) * delta : Rounded(di * step);
    const double y = offset + start;
    const float t = static_cast<float>(static_cast<int64_t>(y));
    sigmas[i] = t / num_train;  // float32 array / int, as numpy computes it
  }
  return SetSigmas(sigmas, mu);
}

absl::Status FlowMatchEulerScheduler::SetSigmas(const std::vector<float>& input,
                                                std::optional<double> mu) {
  if (input.empty()) return absl::InvalidArgumentError("empty sigma schedule");
  if (config_.use_dynamic_shifting && !mu.has_value()) {
    return absl::InvalidArgumentError("mu must be given when use_dynamic_shifting is set");
  }
  std::vector<float> sigmas = input;
  // Python floats meet float32 arrays as float32 scalars (numpy keeps the array's dtype).
  if (config_.use_dynamic_shifting) {
    // time_shift(mu, 1.0, t); the power (1/t − 1)^1.0 is exact and omitted.
    const float m = config_.time_shift_type == "linear" ? static_cast<float>(*mu)
                                                        : static_cast<float>(std::exp(*mu));
    for (float& s : sigmas) {
      const float r = Rounded(1.0f / s) - 1.0f;
      s = m / Rounded(m + r);
    }
  } else {
    const float shift = static_cast<float>(config_.shift);
    const float shift_m1 = static_cast<float>(config_.shift - 1.0);
    for (float& s : sigmas) {
      const float num = Rounded(shift * s);
      const float den = 1.0f + Rounded(shift_m1 * s);
      s = num / den;
    }
  }
  if (config_.shift_terminal.has_value() && *config_.shift_terminal != 0.0) {
    const float scale = (1.0f - sigmas.back()) / static_cast<float>(1.0 - *config_.shift_terminal);
    for (float& s : sigmas) s = 1.0f - Rounded(Rounded(1.0f - s) / scale);
  }
  const float num_train = static_cast<float>(config_.num_train_timesteps);
  if (config_.invert_sigmas) {
    for (float& s : sigmas) s = 1.0f - s;
  }
  timesteps_.resize(sigmas.size());
  for (size_t i = 0; i < sigmas.size(); ++i) timesteps_[i] = Rounded(sigmas[i] * num_train);
  sigmas.push_back(config_.invert_sigmas ? 1.0f : 0.0f);
  sigmas_ = std::move(sigmas);
  return absl::OkStatus();
}

at::Tensor FlowMatchEulerScheduler::Step(const at::Tensor& model_output, int64_t step_index,
                                         const at::Tensor& sample) const {
  TORCH_CHECK(step_index >= 0 && step_index < num_steps(), "step index ", step_index,
              " outside the schedule of ", num_steps(), " steps");
  const float dt = sigmas_[step_index + 1] - sigmas_[step_index];
  // The reference upcasts the sample to float32 and casts the result back to the model
  // output's dtype (float32 in the GLM-Image pipeline, which calls .float() on the guided
  // prediction).
  at::Tensor prev = sample.to(at::kFloat) + model_output * static_cast<double>(dt);
  return prev.to(model_output.scalar_type());
}

at::Tensor FlowMatchEulerScheduler::timesteps_tensor() const {
  return at::tensor(at::ArrayRef<float>(timesteps_), at::kFloat);
}

at::Tensor FlowMatchEulerScheduler::sigmas_tensor() const {
  return at::tensor(at::ArrayRef<float>(sigmas_), at::kFloat);
}

}  // namespace diffmesh::models::glm_image
