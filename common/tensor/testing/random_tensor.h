// Test helper: wire tensors of seeded normal floats.
#ifndef DIFFMESH_COMMON_TENSOR_TESTING_RANDOM_TENSOR_H_
#define DIFFMESH_COMMON_TENSOR_TESTING_RANDOM_TENSOR_H_

#include <cstdint>
#include <random>
#include <vector>

#include "common/tensor/wire_tensor.h"

namespace diffmesh::testing {

// FLOAT32 `shape` filled with standard normal draws from `rng`.
inline v1::Tensor RandomFloats(const std::vector<int64_t>& shape, std::mt19937& rng) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  std::normal_distribution<float> dist;
  for (auto& x : v) x = dist(rng);
  return MakeTensor(DType::kFloat32, shape, v.data(), v.size() * sizeof(float));
}

}  // namespace diffmesh::testing

#endif  // DIFFMESH_COMMON_TENSOR_TESTING_RANDOM_TENSOR_H_
