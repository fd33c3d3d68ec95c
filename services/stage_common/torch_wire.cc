#include "services/stage_common/torch_wire.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/core/weights.h"

namespace diffmesh {

using models::FromScalarType;
using models::ToScalarType;

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
