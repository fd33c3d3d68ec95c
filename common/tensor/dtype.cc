#include "common/tensor/dtype.h"

#include "absl/strings/str_cat.h"

namespace diffmesh {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat64:
    case DType::kInt64:
      return 8;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
    case DType::kInt16:
      return 2;
    case DType::kUInt8:
    case DType::kInt8:
    case DType::kBool:
      return 1;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "F32";
    case DType::kFloat16: return "F16";
    case DType::kBFloat16: return "BF16";
    case DType::kInt64: return "I64";
    case DType::kInt32: return "I32";
    case DType::kUInt8: return "U8";
    case DType::kFloat64: return "F64";
    case DType::kInt8: return "I8";
    case DType::kBool: return "BOOL";
    case DType::kInt16: return "I16";
  }
  return "?";
}

std::optional<DType> DTypeFromName(const std::string& name) {
  for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt64,
                  DType::kInt32, DType::kUInt8, DType::kFloat64, DType::kInt8, DType::kBool,
                  DType::kInt16}) {
    if (name == DTypeName(d)) return d;
  }
  return std::nullopt;
}

absl::StatusOr<int64_t> NumElements(const std::vector<int64_t>& shape, int64_t max_elements) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative dimension ", d));
    if (d != 0 && n > max_elements / d) {
      return absl::InvalidArgumentError("tensor has too many elements");
    }
    n *= d;
  }
  return n;
}

}  // namespace diffmesh
