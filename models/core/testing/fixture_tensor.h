// Test helper: tensors of a reference fixture file (safetensors) as CPU tensors. A missing file
// or tensor fails the calling test and gives an undefined tensor.
#ifndef DIFFMESH_MODELS_CORE_TESTING_FIXTURE_TENSOR_H_
#define DIFFMESH_MODELS_CORE_TESTING_FIXTURE_TENSOR_H_

#include <ATen/ATen.h>

#include <string>

#include "gtest/gtest.h"
#include "models/core/weights.h"

namespace diffmesh::models {

inline at::Tensor ReadFixtureTensor(const std::string& path, const std::string& name) {
  auto ckpt = Checkpoint::Open(path);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok()) return at::Tensor();
  const TensorView* v = (*ckpt)->Find(name);
  EXPECT_NE(v, nullptr) << path << ": " << name;
  return v != nullptr ? ToTensor(*v) : at::Tensor();
}

// Whether `path` opens and holds a tensor `name` (no test failure either way).
inline bool FixtureHasTensor(const std::string& path, const std::string& name) {
  auto ckpt = Checkpoint::Open(path);
  return ckpt.ok() && (*ckpt)->Find(name) != nullptr;
}

}  // namespace diffmesh::models

#endif  // DIFFMESH_MODELS_CORE_TESTING_FIXTURE_TENSOR_H_
