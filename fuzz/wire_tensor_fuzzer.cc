// Fuzzes ValidateTensor over received diffmesh.v1.Tensor messages: the first byte picks the
// expected dtype / rank (or none), the rest is the serialized message. An accepted tensor must
// hold exactly product(shape) × dtype-size bytes.
#include <cstdint>
#include <optional>

#include "common/tensor/wire_tensor.h"
#include "fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t selector = data[0];
  diffmesh::v1::Tensor tensor;
  if (!tensor.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
  std::optional<diffmesh::DType> expected_dtype;
  if (selector & 0x80) expected_dtype = static_cast<diffmesh::DType>((selector & 0x0f) % 11);
  const int expected_rank = (selector & 0x40) ? ((selector >> 4) & 0x03) : -1;
  absl::Status status = diffmesh::ValidateTensor(tensor, "fuzz", expected_dtype, expected_rank);
  if (!status.ok()) return 0;
  std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  auto n = diffmesh::NumElements(shape);
  diffmesh::fuzz::Check(n.ok(), "accepted a bad shape");
  const diffmesh::DType dtype = diffmesh::ToDType(tensor.dtype());
  diffmesh::fuzz::Check(diffmesh::DTypeSize(dtype) > 0, "accepted an unknown dtype");
  diffmesh::fuzz::Check(
      tensor.data().size() == static_cast<size_t>(*n) * diffmesh::DTypeSize(dtype),
      "accepted a data size that does not match the shape");
  if (expected_dtype) diffmesh::fuzz::Check(dtype == *expected_dtype, "wrong dtype accepted");
  if (expected_rank >= 0) {
    diffmesh::fuzz::Check(static_cast<int>(shape.size()) == expected_rank, "wrong rank accepted");
  }
  return 0;
}
