// Outputs on the wire: split into ordered chunks of at most kMaxOutputChunkBytes (so that no
// message nears gRPC's size limit whatever the video length), and assembled again. Used by the
// stages that produce outputs, the orchestrator and the SDK. gRPC-free, LibTorch-free.
#ifndef DIFFMESH_COMMON_OUTPUT_OUTPUT_CHUNKS_H_
#define DIFFMESH_COMMON_OUTPUT_OUTPUT_CHUNKS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "diffmesh/v1/generation.pb.h"

namespace diffmesh {

inline constexpr int64_t kMaxOutputChunkBytes = 1 << 20;

// Calls `emit` with the chunks of `data` in order; the first carries `info` (its size_bytes
// set to data's length). An empty output still gives one chunk.
void ForEachOutputChunk(const v1::OutputInfo& info, const std::string& data,
                        const std::function<void(v1::OutputChunk&&)>& emit,
                        int64_t max_chunk_bytes = kMaxOutputChunkBytes);

// The info of a raw tensor output (OUTPUT_KIND_TENSOR, application/octet-stream) named `name`,
// at `index`, with `tensor`'s dtype and shape.
v1::OutputInfo TensorOutputInfo(int index, const std::string& name, const v1::Tensor& tensor);

// Reassembles outputs from their chunks, checking that each output's chunks start with its
// info and are contiguous and complete. Not thread-safe.
class OutputAssembler {
 public:
  // INVALID_ARGUMENT / DATA_LOSS naming the output when a chunk does not fit.
  absl::Status Add(const v1::OutputChunk& chunk);
  // Fills each output of `result` (matched by info.index) with its bytes; every output must be
  // complete and every assembled output listed.
  absl::Status Fill(v1::GenerateResult& result);
  // The outputs so far, by index (bytes as received).
  const std::vector<v1::Output>& outputs() const { return outputs_; }

 private:
  std::vector<v1::Output> outputs_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_OUTPUT_OUTPUT_CHUNKS_H_
