// Validation and construction of wire tensors (diffmesh.v1.Tensor). LibTorch-free.
#ifndef DIFFMESH_COMMON_TENSOR_WIRE_TENSOR_H_
#define DIFFMESH_COMMON_TENSOR_WIRE_TENSOR_H_

#include <cstdint>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "common/tensor/dtype.h"
#include "diffmesh/v1/tensor.pb.h"

namespace diffmesh {

// Checks a received tensor: known dtype, non-negative shape, and data size equal to
// product(shape) × dtype size. `what` names the field in the error (e.g. "prompt_embeds").
// When `expected_dtype` / `expected_rank` are given they are enforced too.
absl::Status ValidateTensor(const v1::Tensor& tensor, absl::string_view what,
                            std::optional<DType> expected_dtype = std::nullopt,
                            int expected_rank = -1);

// Builds a wire tensor from raw little-endian bytes.
v1::Tensor MakeTensor(DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes);

inline DType ToDType(v1::DType d) { return static_cast<DType>(d); }
inline v1::DType ToProto(DType d) { return static_cast<v1::DType>(d); }

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_TENSOR_WIRE_TENSOR_H_
