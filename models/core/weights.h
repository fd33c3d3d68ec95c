// Named parameters for the models: declared by each model (name, shape, init), then either
// drawn from a seeded generator (built-in small configs) or loaded from a checkpoint by name,
// with every name and shape checked before anything runs.
#ifndef DIFFMESH_MODELS_CORE_WEIGHTS_H_
#define DIFFMESH_MODELS_CORE_WEIGHTS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors/safetensors.h"

namespace diffmesh::models {

enum class Init {
  kNormal,  // N(0, std²)
  kOnes,    // norm scales
  kZeros,   // biases
};

struct ParamSpec {
  std::string name;            // the reference checkpoint's parameter name
  std::vector<int64_t> shape;
  Init init = Init::kNormal;
  float std = 0.02f;           // for kNormal
};

// Appends the usual pair for a linear layer `prefix`.weight [out, in] (+ `prefix`.bias [out]).
void AddLinear(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out,
               bool bias = true);

using WeightMap = std::unordered_map<std::string, at::Tensor>;

// Deterministic weights: each parameter drawn from its own generator seeded by `seed` and its
// name, so adding a parameter does not change the others. fp32, CPU.
WeightMap InitSeeded(const std::vector<ParamSpec>& specs, uint64_t seed);

// Loads exactly `specs` from `checkpoint`, converted to `dtype`: a missing or misshaped tensor
// is an error naming it and its file; names in the checkpoint that no spec claims are an error
// unless they start with one of `ignored_prefixes`.
absl::StatusOr<WeightMap> LoadWeights(const Checkpoint& checkpoint,
                                      const std::vector<ParamSpec>& specs,
                                      at::ScalarType dtype = at::kFloat,
                                      const std::vector<std::string>& ignored_prefixes = {});

// Checks that `weights` holds exactly `specs` (names and shapes).
absl::Status CheckWeights(const WeightMap& weights, const std::vector<ParamSpec>& specs);

// The ATen scalar type of a diffmesh dtype, and back (nullopt for types the wire cannot carry).
at::ScalarType ToScalarType(DType dtype);
std::optional<DType> FromScalarType(at::ScalarType type);

// Copies a view (any dtype) into a new CPU tensor of its own dtype.
at::Tensor ToTensor(const TensorView& view);

// Fetches a tensor by name or dies with the name; used by model constructors after
// CheckWeights has passed.
const at::Tensor& Get(const WeightMap& weights, const std::string& name);

}  // namespace diffmesh::models

#endif  // DIFFMESH_MODELS_CORE_WEIGHTS_H_
