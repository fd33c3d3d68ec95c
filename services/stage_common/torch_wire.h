// at::Tensor ↔ wire tensor (diffmesh.v1.Tensor) for the stage cores.
#ifndef DIFFMESH_SERVICES_STAGE_COMMON_TORCH_WIRE_H_
#define DIFFMESH_SERVICES_STAGE_COMMON_TORCH_WIRE_H_

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "common/tensor/wire_tensor.h"

namespace diffmesh {

// Copies `t` (any device/layout) into a wire tensor of the same dtype.
absl::StatusOr<v1::Tensor> ToWire(const at::Tensor& t);

// Validates `wire` (see ValidateTensor) and copies it into a CPU tensor.
absl::StatusOr<at::Tensor> FromWire(const v1::Tensor& wire, absl::string_view what,
                                    std::optional<DType> expected_dtype = std::nullopt,
                                    int expected_rank = -1);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_STAGE_COMMON_TORCH_WIRE_H_
