// Test helper: what a denoise call streamed back — its progress events, its outputs assembled
// from their chunks, and its result — with the outputs decoded for comparison.
#ifndef DIFFMESH_SERVICES_DENOISE_TESTING_DENOISE_OUTPUTS_H_
#define DIFFMESH_SERVICES_DENOISE_TESTING_DENOISE_OUTPUTS_H_

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/image/png.h"
#include "common/output/output_chunks.h"
#include "common/tensor/wire_tensor.h"
#include "diffmesh/v1/stages.pb.h"
#include "services/stage_common/torch_wire.h"

namespace diffmesh::testing {

struct DenoiseOutputs {
  int steps = 0;                    // progress events
  v1::DenoiseEvent::Result result;  // the last event
  bool have_result = false;
  std::vector<v1::Output> outputs;  // assembled
  absl::Status broken;              // a chunk that did not fit

  void Add(const v1::DenoiseEvent& e) {
    if (e.has_progress()) ++steps;
    if (e.has_output() && broken.ok()) broken = assembler_.Add(e.output());
    if (e.has_result()) {
      result = e.result();
      have_result = true;
      outputs = assembler_.outputs();
    }
  }
  // The output named `name` (e.g. "image", "latents", "frames"), or nullptr.
  const v1::Output* Find(const std::string& name) const {
    for (const auto& o : outputs) {
      if (o.info().name() == name) return &o;
    }
    return nullptr;
  }

 private:
  OutputAssembler assembler_;
};

// A tensor output's bytes as a tensor.
inline absl::StatusOr<at::Tensor> TensorOf(const v1::Output& out) {
  v1::Tensor t;
  t.set_dtype(out.info().tensor_dtype());
  *t.mutable_shape() = out.info().tensor_shape();
  t.set_data(out.data());
  return FromWire(t, out.info().name());
}

}  // namespace diffmesh::testing

#endif  // DIFFMESH_SERVICES_DENOISE_TESTING_DENOISE_OUTPUTS_H_
