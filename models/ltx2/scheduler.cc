#include "models/ltx2/scheduler.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"

namespace diffmesh::models::ltx2 {
namespace {

// Rounds to the storage type. Keeps a·b + c from being contracted into an FMA, so every
// operation rounds exactly as numpy/torch round it.
template <typename T>
T Rounded(T x) {
  volatile T v = x;
  return v;
}

template <typename T>
absl::Status Read(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "ltx2 scheduler", key, out);
}

}  // namespace

absl::StatusOr<SchedulerConfig> SchedulerConfig::FromJson(const nlohmann::json& json) {
  if (!json.is_object()) return absl::InvalidArgumentError("ltx2 scheduler config: not an object");
  SchedulerConfig c;
  RETURN_IF_ERROR(Read(json, "num_train_timesteps", c.num_train_timesteps));
  RETURN_IF_ERROR(Read(json, "shift", c.shift));
  RETURN_IF_ERROR(Read(json, "use_dynamic_shifting", c.use_dynamic_shifting));
  RETURN_IF_ERROR(Read(json, "base_shift", c.base_shift));
  RETURN_IF_ERROR(Read(json, "max_shift", c.max_shift));
  RETURN_IF_ERROR(Read(json, "base_image_seq_len", c.base_image_seq_len));
  RETURN_IF_ERROR(Read(json, "max_image_seq_len", c.max_image_seq_len));
  RETURN_IF_ERROR(Read(json, "invert_sigmas", c.invert_sigmas));
  RETURN_IF_ERROR(Read(json, "time_shift_type", c.time_shift_type));
  double terminal = 0.0;
  RETURN_IF_ERROR(Read(json, "shift_terminal", terminal));
  if (terminal != 0.0) c.shift_terminal = terminal;  // the reference tests truthiness
  for (const char* key :
       {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling"}) {
    bool on = false;
    RETURN_IF_ERROR(Read(json, key, on));
    if (on) {
      return absl::UnimplementedError(absl::StrCat("ltx2 scheduler config: ", key,
                                                   " is not supported"));
    }
  }
  if (c.time_shift_type != "exponential" && c.time_shift_type != "linear") {
    return absl::InvalidArgumentError(absl::StrCat(
        "ltx2 scheduler config: time_shift_type must be 'exponential' or 'linear', got '",
        c.time_shift_type, "'"));
  }
  if (c.num_train_timesteps <= 0) {
    return absl::InvalidArgumentError("ltx2 scheduler config: num_train_timesteps must be positive");
  }
  if (c.max_image_seq_len == c.base_image_seq_len) {
    return absl::InvalidArgumentError(
        "ltx2 scheduler config: max_image_seq_len equals base_image_seq_len");
  }
  return c;
}

absl::StatusOr<SchedulerConfig> SchedulerConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

double CalculateShift(int64_t image_seq_len, int64_t base_seq_len, int64_t max_seq_len,
                      double base_shift, double max_shift) {
  const double m = (max_shift - base_shift) / static_cast<double>(max_seq_len - base_seq_len);
  const double b = base_shift - Rounded(m * static_cast<double>(base_seq_len));
  return Rounded(static_cast<double>(image_seq_len) * m) + b;
}

double CalculateShift(int64_t image_seq_len, const SchedulerConfig& config) {
  return CalculateShift(image_seq_len, config.base_image_seq_len, config.max_image_seq_len,
                        config.base_shift, config.max_shift);
}

std::vector<double> DefaultPipelineSigmas(int64_t num_steps) {
  // np.linspace(start, stop, n): start + i·step with step = (stop − start)/(n − 1); the last
  // point is exactly stop.
  std::vector<double> out(static_cast<size_t>(std::max<int64_t>(num_steps, 0)));
  if (num_steps <= 0) return out;
  const double start = 1.0, stop = 1.0 / static_cast<double>(num_steps);
  out[0] = start;
  if (num_steps == 1) return out;
  const double step = (stop - start) / static_cast<double>(num_steps - 1);
  for (int64_t i = 1; i < num_steps - 1; ++i) out[i] = Rounded(static_cast<double>(i) * step) + start;
  out[num_steps - 1] = stop;
  return out;
}

std::vector<float> OfficialSigmas(int64_t num_steps, std::optional<int64_t> tokens,
                                  const OfficialScheduleOptions& o) {
  // Torch float32 operations in the reference's order: `s / t` with a Python float s on the
  // left is reciprocal(t)·s, a Python scalar meets a float32 tensor as float32.
  constexpr double kBaseAnchor = 1024.0, kMaxAnchor = 4096.0;
  const double n_tokens = static_cast<double>(tokens.value_or(o.default_number_of_tokens));
  const double mm = (o.max_shift - o.base_shift) / (kMaxAnchor - kBaseAnchor);
  const double b = o.base_shift - Rounded(mm * kBaseAnchor);
  const double shift = Rounded(n_tokens * mm) + b;
  const double e = std::exp(shift);

  at::Tensor sigmas = at::linspace(1.0, 0.0, num_steps + 1, at::kFloat);
  at::Tensor r = at::reciprocal(sigmas) - 1.0;  // (1/σ − 1)^1
  at::Tensor shifted = at::reciprocal(r + e) * e;
  sigmas = at::where(sigmas != 0, shifted, at::zeros_like(sigmas));
  if (o.stretch) {
    at::Tensor nonzero = sigmas != 0;
    at::Tensor one_minus_z = 1.0 - sigmas.masked_select(nonzero);
    if (one_minus_z.numel() > 0) {
      at::Tensor scale = one_minus_z[-1] / (1.0 - o.terminal);
      sigmas.masked_scatter_(nonzero, 1.0 - one_minus_z / scale);
    }
  }
  sigmas = sigmas.contiguous();
  return std::vector<float>(sigmas.data_ptr<float>(), sigmas.data_ptr<float>() + sigmas.numel());
}

absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> FlowMatchEulerScheduler::Create(
    const SchedulerConfig& config) {
  return std::unique_ptr<FlowMatchEulerScheduler>(new FlowMatchEulerScheduler(config));
}

absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> FlowMatchEulerScheduler::Load(
    const std::string& path) {
  ASSIGN_OR_RETURN(SchedulerConfig config, SchedulerConfig::FromFile(path));
  return Create(config);
}

absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> FlowMatchEulerScheduler::FromJson(
    const nlohmann::json& json) {
  ASSIGN_OR_RETURN(SchedulerConfig config, SchedulerConfig::FromJson(json));
  return Create(config);
}

absl::Status FlowMatchEulerScheduler::SetSigmas(const std::vector<double>& input,
                                                std::optional<double> mu) {
  if (input.empty()) return absl::InvalidArgumentError("ltx2 scheduler: empty sigma schedule");
  if (config_.use_dynamic_shifting && !mu.has_value()) {
    return absl::InvalidArgumentError(
        "ltx2 scheduler: mu must be given when use_dynamic_shifting is set");
  }
  // np.array(sigmas).astype(float32); afterwards Python floats meet the float32 array as float32
  // scalars (numpy's value-based casting) and every operation rounds to float32.
  std::vector<float> sigmas(input.begin(), input.end());
  if (config_.use_dynamic_shifting) {
    // time_shift(mu, 1.0, t) = m / (m + (1/t − 1)^1), m = e^mu (exponential) or mu (linear).
    const float m = config_.time_shift_type == "linear" ? static_cast<float>(*mu)
                                                        : static_cast<float>(std::exp(*mu));
    for (float& s : sigmas) {
      const float r = Rounded(1.0f / s) - 1.0f;
      s = m / Rounded(m + r);
    }
  } else {
    const float shift = static_cast<float>(config_.shift);
    const float shift_m1 = static_cast<float>(config_.shift - 1.0);
    for (float& s : sigmas) s = Rounded(shift * s) / (1.0f + Rounded(shift_m1 * s));
  }
  if (config_.shift_terminal.has_value()) {
    // scale = float64(1 − σ_last) / (1 − terminal), then used as a float32 scalar.
    const double last = static_cast<double>(Rounded(1.0f - sigmas.back()));
    const float scale = static_cast<float>(last / (1.0 - *config_.shift_terminal));
    for (float& s : sigmas) s = 1.0f - Rounded(Rounded(1.0f - s) / scale);
  }
  if (config_.invert_sigmas) {
    for (float& s : sigmas) s = 1.0f - s;
  }
  const float num_train = static_cast<float>(config_.num_train_timesteps);
  timesteps_.resize(sigmas.size());
  for (size_t i = 0; i < sigmas.size(); ++i) timesteps_[i] = Rounded(sigmas[i] * num_train);
  sigmas.push_back(config_.invert_sigmas ? 1.0f : 0.0f);
  sigmas_ = std::move(sigmas);
  return absl::OkStatus();
}

absl::Status FlowMatchEulerScheduler::SetPipelineSchedule(int64_t num_steps, int64_t video_tokens) {
  if (num_steps <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ltx2 scheduler: num_steps must be positive, got ", num_steps));
  }
  return SetSigmas(DefaultPipelineSigmas(num_steps), CalculateShift(video_tokens, config_));
}

absl::Status FlowMatchEulerScheduler::SetFullSchedule(const std::vector<float>& sigmas) {
  if (sigmas.size() < 2) {
    return absl::InvalidArgumentError(
        "ltx2 scheduler: a full schedule needs at least two sigmas (one step and the terminal)");
  }
  sigmas_ = sigmas;
  const float num_train = static_cast<float>(config_.num_train_timesteps);
  timesteps_.resize(sigmas.size() - 1);
  for (size_t i = 0; i + 1 < sigmas.size(); ++i) timesteps_[i] = Rounded(sigmas[i] * num_train);
  return absl::OkStatus();
}

at::Tensor FlowMatchEulerScheduler::Step(const at::Tensor& model_output, int64_t step_index,
                                         const at::Tensor& sample) const {
  TORCH_CHECK(step_index >= 0 && step_index < num_steps(), "step index ", step_index,
              " outside the schedule of ", num_steps(), " steps");
  const float dt = sigmas_[step_index + 1] - sigmas_[step_index];
  // The reference upcasts the sample to float32 and casts the result to the model output's dtype.
  at::Tensor prev = sample.to(at::kFloat) + model_output * static_cast<double>(dt);
  return prev.to(model_output.scalar_type());
}

at::Tensor FlowMatchEulerScheduler::timesteps_tensor() const {
  return at::tensor(at::ArrayRef<float>(timesteps_), at::kFloat);
}

at::Tensor FlowMatchEulerScheduler::sigmas_tensor() const {
  return at::tensor(at::ArrayRef<float>(sigmas_), at::kFloat);
}

}  // namespace diffmesh::models::ltx2
