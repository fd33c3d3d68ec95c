#include "common/output/output_chunks.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace diffmesh {

v1::OutputInfo TensorOutputInfo(int index, const std::string& name, const v1::Tensor& tensor) {
  v1::OutputInfo info;
  info.set_index(index);
  info.set_name(name);
  info.set_kind(v1::OUTPUT_KIND_TENSOR);
  info.set_mime_type("application/octet-stream");
  info.set_tensor_dtype(tensor.dtype());
  *info.mutable_tensor_shape() = tensor.shape();
  return info;
}

void ForEachOutputChunk(const v1::OutputInfo& info, const std::string& data,
                        const std::function<void(v1::OutputChunk&&)>& emit,
                        int64_t max_chunk_bytes) {
  const int64_t size = static_cast<int64_t>(data.size());
  int64_t offset = 0;
  do {
    const int64_t n = std::min(max_chunk_bytes, size - offset);
    v1::OutputChunk chunk;
    chunk.set_index(info.index());
    chunk.set_offset(offset);
    chunk.set_data(data.data() + offset, static_cast<size_t>(n));
    if (offset == 0) {
      *chunk.mutable_info() = info;
      chunk.mutable_info()->set_size_bytes(size);
    }
    offset += n;
    emit(std::move(chunk));
  } while (offset < size);
}

absl::Status OutputAssembler::Add(const v1::OutputChunk& chunk) {
  const int index = chunk.index();
  if (index < 0 || index > static_cast<int>(outputs_.size())) {
    return absl::DataLossError(absl::StrCat("output ", index, ": chunk out of order"));
  }
  if (index == static_cast<int>(outputs_.size())) {
    if (chunk.offset() != 0 || !chunk.has_info() || chunk.info().index() != index) {
      return absl::DataLossError(absl::StrCat("output ", index, ": first chunk lacks its info"));
    }
    v1::Output out;
    *out.mutable_info() = chunk.info();
    outputs_.push_back(std::move(out));
  }
  v1::Output& out = outputs_[index];
  if (chunk.offset() != static_cast<int64_t>(out.data().size()) ||
      static_cast<int64_t>(out.data().size() + chunk.data().size()) > out.info().size_bytes()) {
    return absl::DataLossError(absl::StrCat("output ", index, ": chunk at offset ",
                                            chunk.offset(), " does not continue its ",
                                            out.data().size(), " bytes"));
  }
  out.mutable_data()->append(chunk.data());
  return absl::OkStatus();
}

absl::Status OutputAssembler::Fill(v1::GenerateResult& result) {
  if (result.outputs_size() != static_cast<int>(outputs_.size())) {
    return absl::DataLossError(absl::StrCat("the result lists ", result.outputs_size(),
                                            " outputs, ", outputs_.size(), " arrived"));
  }
  for (v1::Output& out : *result.mutable_outputs()) {
    const int index = out.info().index();
    if (index < 0 || index >= static_cast<int>(outputs_.size())) {
      return absl::DataLossError(absl::StrCat("the result lists unknown output ", index));
    }
    const v1::Output& got = outputs_[index];
    if (static_cast<int64_t>(got.data().size()) != got.info().size_bytes()) {
      return absl::DataLossError(absl::StrCat("output ", index, ": ", got.data().size(), " of ",
                                              got.info().size_bytes(), " bytes arrived"));
    }
    *out.mutable_data() = got.data();
  }
  return absl::OkStatus();
}

}  // namespace diffmesh
