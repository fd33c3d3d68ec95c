// Fuzzes SafetensorsFile::Open: the input is a whole .safetensors file (8-byte header length,
// JSON header, data). Every tensor it accepts must lie inside the data, match its shape's byte
// size, and the tensors must tile the data without overlap.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/safetensors/safetensors.h"
#include "fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static diffmesh::fuzz::MemoryFile file;
  const std::string& path = file.Set(data, size);
  auto opened = diffmesh::SafetensorsFile::Open(path);
  if (!opened.ok()) return 0;
  using diffmesh::fuzz::Check;
  Check(size >= 8, "accepted a file shorter than its header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  Check(header_len <= size - 8, "accepted a header past the end");
  const size_t data_size = size - 8 - header_len;
  // The views point into the mapping: with the data tiled, the lowest one is its start.
  std::vector<std::pair<const uint8_t*, size_t>> extents;
  for (const auto& [name, view] : (*opened)->tensors()) {
    auto n = diffmesh::NumElements(view.shape);
    Check(n.ok(), "accepted a tensor with a bad shape");
    Check(view.nbytes == static_cast<size_t>(*n) * diffmesh::DTypeSize(view.dtype),
          "byte size does not match the shape");
    Check(view.data != nullptr, "null view");
    extents.push_back({view.data, view.nbytes});
  }
  std::sort(extents.begin(), extents.end());
  size_t covered = 0;
  for (size_t i = 0; i < extents.size(); ++i) {
    if (i > 0) {
      Check(extents[i].first == extents[i - 1].first + extents[i - 1].second,
            "tensors overlap or leave a gap");
    }
    covered += extents[i].second;
    // Read the first and last byte of each view: ASan reports one past the mapping.
    if (extents[i].second > 0) {
      volatile uint8_t sink = extents[i].first[0] ^ extents[i].first[extents[i].second - 1];
      (void)sink;
    }
  }
  Check(covered == data_size, "tensors do not cover the data exactly");
  return 0;
}
