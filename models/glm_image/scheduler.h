// Flow-matching Euler sampler: diffusers `FlowMatchEulerDiscreteScheduler` (deterministic
// variant) together with the schedule the GLM-Image pipeline builds for it.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_SCHEDULER_H_
#define DIFFMESH_MODELS_GLM_IMAGE_SCHEDULER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {

// scheduler/scheduler_config.json; missing keys take the diffusers constructor defaults.
struct SchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  int64_t base_image_seq_len = 256;
  int64_t max_image_seq_len = 4096;
  bool invert_sigmas = false;
  std::optional<double> shift_terminal;
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;
  std::string time_shift_type = "exponential";  // or "linear"
  bool stochastic_sampling = false;

  static absl::StatusOr<SchedulerConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<SchedulerConfig> FromFile(const std::string& path);
};

// The GLM-Image pipeline's resolution-dependent shift (its own calculate_shift, which unlike
// Flux's has no max_seq_len term): sqrt(image_seq_len / base_seq_len) · max_shift + base_shift,
// in double like the Python float arithmetic. image_seq_len is the number of DiT patches,
// (H/vae_scale/patch)·(W/vae_scale/patch).
double CalculateShift(int64_t image_seq_len, int64_t base_seq_len, double base_shift,
                      double max_shift);

// Same, with base_image_seq_len/base_shift/max_shift from `config`, as the pipeline reads them
// (its own fallbacks 256 / 0.25 / 0.75 never apply: a registered diffusers config always holds
// every key, filled with the scheduler's constructor defaults, as SchedulerConfig does).
double CalculateShift(int64_t image_seq_len, const SchedulerConfig& config);

class FlowMatchEulerScheduler {
 public:
  // Karras/exponential/beta sigma conversions and stochastic sampling are not supported (the
  // GLM-Image configuration uses none of them): such a config is an error.
  static absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> Create(
      const SchedulerConfig& config);
  static absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> Load(const std::string& path);

  // The GLM-Image pipeline's default schedule: integer timesteps
  // trunc(linspace(num_train_timesteps, 1, num_steps + 1)[:-1]), sigmas = those / num_train,
  // then SetSigmas(sigmas, mu). `mu` is required with dynamic shifting.
  absl::Status SetTimesteps(int64_t num_steps, std::optional<double> mu);

  // scheduler.set_timesteps(sigmas=..., mu=...): shift (dynamic via mu, or static `shift`),
  // optional terminal stretch, optional inversion; timesteps = sigmas · num_train_timesteps,
  // sigmas get a terminal 0 (1 when inverted) appended. All in float32 like the reference.
  absl::Status SetSigmas(const std::vector<float>& sigmas, std::optional<double> mu);

  // Euler step from sigmas[step_index] to sigmas[step_index + 1]:
  // prev = float32(sample) + (σ_next − σ)·model_output, returned in model_output's dtype.
  at::Tensor Step(const at::Tensor& model_output, int64_t step_index,
                  const at::Tensor& sample) const;

  int64_t num_steps() const { return static_cast<int64_t>(timesteps_.size()); }
  const std::vector<float>& timesteps() const { return timesteps_; }  // [n]
  const std::vector<float>& sigmas() const { return sigmas_; }        // [n + 1]
  at::Tensor timesteps_tensor() const;                                // [n] float32, CPU
  at::Tensor sigmas_tensor() const;                                   // [n + 1] float32, CPU
  const SchedulerConfig& config() const { return config_; }

 private:
  explicit FlowMatchEulerScheduler(const SchedulerConfig& config) : config_(config) {}

  SchedulerConfig config_;
  std::vector<float> timesteps_;
  std::vector<float> sigmas_;
};

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_SCHEDULER_H_
