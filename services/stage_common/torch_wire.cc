#include "services/stage_common/torch_wire.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace diffmesh {
namespace {

std::optional<DType> FromScalarType(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kLong: return DType::kInt64;
    case at::kInt: return DType::kInt32;
    case at::kByte: return DType::kUInt8;
    case at::kDouble: return DType::kFloat64;
    case at::kChar: return DType::kInt8;
    case at::kBool: return DType::kBool;
    case at::kShort: return DType::kInt16;
    default: return std::nullopt;
  }
}

at::ScalarType ToScalarType(DType d) {
  switch (d) {
    case DType::kFloat32: return at::kFloat;
    case DType::kFloat16: return at::kHalf;
    case DType::kBFloat16: return at::kBFloat16;
    case DType::kInt64: return at::kLong;
    case DType::kInt32: return at::kInt;
    case DType::kUInt8: return at::kByte;
    case DType::kFloat64: return at::kDouble;
    case DType::kInt8: return at::kChar;
    case DType::kBool: return at::kBool;
    case DType::kInt16: return at::kShort;
  }
  return at::kFloat;
}

}  // namespace

absl::StatusOr<v1::Tensor> ToWire(const at::Tensor& t) {
  auto dtype = FromScalarType(t.scalar_type());
  if (!dtype) return absl::InvalidArgumentError(absl::StrCat("no wire dtype for ", t.scalar_type()));
  at::Tensor c = t.to(at::kCPU).contiguous();
  std::vector<int64_t> shape(c.sizes().begin(), c.sizes().end());
  return MakeTensor(*dtype, shape, c.data_ptr(), c.numel() * c.element_size());
}

absl::StatusOr<at::Tensor> FromWire(const v1::Tensor& wire, absl::string_view what,
                                    std::optional<DType> expected_dtype, int expected_rank) {
  RETURN_IF_ERROR(ValidateTensor(wire, what, expected_dtype, expected_rank));
  std::vector<int64_t> shape(wire.shape().begin(), wire.shape().end());
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(ToScalarType(ToDType(wire.dtype()))));
  if (!wire.data().empty()) std::memcpy(t.data_ptr(), wire.data().data(), wire.data().size());
  return t;
}

}  // namespace diffmesh
