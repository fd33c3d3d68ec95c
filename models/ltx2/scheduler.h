// LTX-2's sigma schedules and Euler step.
//  - The diffusers path: `FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas, mu)` as
//    `LTX2Pipeline` calls it (schedulers/scheduling_flow_match_euler_discrete.py and
//    pipelines/ltx2/pipeline_ltx2.py at 58eb52c): sigmas = linspace(1, 1/N, N), mu =
//    calculate_shift(video tokens) from scheduler_config.json, exponential or linear time shift,
//    stretch to `shift_terminal`, terminal 0 appended.
//  - The official one: Lightricks' `LTX2Scheduler.execute` (ltx_core/components/schedulers.py):
//    linspace(1, 0, N + 1) shifted by a token-count shift (2.05 when no latent is given), then
//    stretched so that the last nonzero sigma equals the terminal value.
// Both feed the same Euler step x ← x + (σ_next − σ)·v.
#ifndef DIFFMESH_MODELS_LTX2_SCHEDULER_H_
#define DIFFMESH_MODELS_LTX2_SCHEDULER_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

// scheduler/scheduler_config.json; missing keys take the diffusers constructor defaults, except
// the four calculate_shift fields, which take LTX2Pipeline's fallbacks (1024, 4096, 0.95, 2.05).
// Karras/exponential/beta sigma conversions and stochastic sampling (no LTX-2 configuration
// uses them) are UNIMPLEMENTED.
struct SchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.95;
  double max_shift = 2.05;
  int64_t base_image_seq_len = 1024;
  int64_t max_image_seq_len = 4096;
  bool invert_sigmas = false;
  std::optional<double> shift_terminal;  // null/absent/0: no stretch
  std::string time_shift_type = "exponential";  // or "linear"

  static absl::StatusOr<SchedulerConfig> FromJson(const nlohmann::json& json);
  static absl::StatusOr<SchedulerConfig> FromFile(const std::string& path);
};

// LTX2Pipeline's calculate_shift: the line through (base_seq_len, base_shift) and
// (max_seq_len, max_shift) evaluated at `image_seq_len` (not clamped), in double like Python.
double CalculateShift(int64_t image_seq_len, int64_t base_seq_len, int64_t max_seq_len,
                      double base_shift, double max_shift);
double CalculateShift(int64_t image_seq_len, const SchedulerConfig& config);

// np.linspace(1.0, 1/N, N): the pipeline's default sigmas (double).
std::vector<double> DefaultPipelineSigmas(int64_t num_steps);

// Options of the official LTX2Scheduler.execute, with its defaults.
struct OfficialScheduleOptions {
  double max_shift = 2.05;
  double base_shift = 0.95;
  bool stretch = true;
  double terminal = 0.1;
  // Token count used when none is given (the official non-HQ pipelines pass no latent, which
  // makes the shift exactly max_shift).
  int64_t default_number_of_tokens = 4096;
};

// LTX2Scheduler.execute(steps, latent): `tokens` = prod(latent.shape[2:]) or nullopt → the
// steps + 1 sigmas (terminal 0 included), computed in float32 like the reference's torch ops.
std::vector<float> OfficialSigmas(int64_t num_steps, std::optional<int64_t> tokens,
                                  const OfficialScheduleOptions& options = {});

class FlowMatchEulerScheduler {
 public:
  static absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> Create(
      const SchedulerConfig& config);
  static absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> Load(const std::string& path);
  static absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> FromJson(
      const nlohmann::json& json);

  // set_timesteps(sigmas=..., mu=...): the sigmas are cast to float32, shifted (dynamically with
  // `mu`, required when use_dynamic_shifting, else by the static `shift`), stretched to
  // shift_terminal, optionally inverted; timesteps = σ·num_train_timesteps; a terminal 0 (1 when
  // inverted) is appended. Float32 arithmetic as numpy/torch perform it.
  absl::Status SetSigmas(const std::vector<double>& sigmas, std::optional<double> mu);

  // What LTX2Pipeline does for `num_steps` and a video latent of `video_tokens` tokens (the
  // audio scheduler is a copy with the same schedule): DefaultPipelineSigmas with
  // mu = CalculateShift(video_tokens).
  absl::Status SetPipelineSchedule(int64_t num_steps, int64_t video_tokens);

  // Uses a finished schedule as is: `sigmas` holds N + 1 values with the terminal one last
  // (e.g. OfficialSigmas or a distilled list); timesteps = σ·num_train_timesteps for the first N.
  absl::Status SetFullSchedule(const std::vector<float>& sigmas);

  // Euler step from sigmas[step_index] to sigmas[step_index + 1]:
  // prev = float32(sample) + (σ_next − σ)·model_output, returned in model_output's dtype.
  at::Tensor Step(const at::Tensor& model_output, int64_t step_index,
                  const at::Tensor& sample) const;

  int64_t num_steps() const { return static_cast<int64_t>(timesteps_.size()); }
  const std::vector<float>& timesteps() const { return timesteps_; }  // [N]
  const std::vector<float>& sigmas() const { return sigmas_; }        // [N + 1]
  at::Tensor timesteps_tensor() const;                                // [N] float32, CPU
  at::Tensor sigmas_tensor() const;                                   // [N + 1] float32, CPU
  const SchedulerConfig& config() const { return config_; }

 private:
  explicit FlowMatchEulerScheduler(const SchedulerConfig& config) : config_(config) {}

  SchedulerConfig config_;
  std::vector<float> timesteps_;
  std::vector<float> sigmas_;
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_SCHEDULER_H_
