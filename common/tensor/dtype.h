// Element types shared by the wire format, the safetensors reader and the models.
#ifndef DIFFMESH_COMMON_TENSOR_DTYPE_H_
#define DIFFMESH_COMMON_TENSOR_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh {

enum class DType : int {
  kFloat32 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kInt64 = 4,
  kInt32 = 5,
  kUInt8 = 6,
  kFloat64 = 7,
  kInt8 = 8,
  kBool = 9,
  kInt16 = 10,
};

// Bytes per element.
size_t DTypeSize(DType dtype);
// "F32", "BF16", ... as safetensors spells them.
const char* DTypeName(DType dtype);
std::optional<DType> DTypeFromName(const std::string& safetensors_name);

// Product of `shape`, or an error for negative dims or overflow past `max_elements`.
absl::StatusOr<int64_t> NumElements(const std::vector<int64_t>& shape,
                                    int64_t max_elements = int64_t{1} << 40);

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_TENSOR_DTYPE_H_
