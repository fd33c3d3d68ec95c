#include "common/tensor/wire_tensor.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace diffmesh {

absl::Status ValidateTensor(const v1::Tensor& tensor, absl::string_view what,
                            std::optional<DType> expected_dtype, int expected_rank) {
  const int d = static_cast<int>(tensor.dtype());
  if (d < static_cast<int>(DType::kFloat32) || d > static_cast<int>(DType::kInt16)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": unknown dtype ", d));
  }
  const DType dtype = ToDType(tensor.dtype());
  if (expected_dtype && dtype != *expected_dtype) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": dtype ", DTypeName(dtype),
                                                   ", expected ", DTypeName(*expected_dtype)));
  }
  std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  if (expected_rank >= 0 && static_cast<int>(shape.size()) != expected_rank) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": rank ", shape.size(), ", expected ",
                                                   expected_rank));
  }
  auto n = NumElements(shape);
  if (!n.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", n.status().message()));
  const uint64_t want = static_cast<uint64_t>(*n) * DTypeSize(dtype);
  if (tensor.data().size() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", tensor.data().size(), " data bytes for shape [",
                     absl::StrJoin(shape, ","), "] of ", DTypeName(dtype), " (expected ", want, ")"));
  }
  return absl::OkStatus();
}

v1::Tensor MakeTensor(DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes) {
  v1::Tensor t;
  t.set_dtype(ToProto(dtype));
  for (int64_t s : shape) t.add_shape(s);
  t.set_data(data, nbytes);
  return t;
}

}  // namespace diffmesh
