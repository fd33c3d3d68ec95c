// PNG encoding/decoding of 8-bit RGB images (libspng). LibTorch-free.
#ifndef DIFFMESH_COMMON_IMAGE_PNG_H_
#define DIFFMESH_COMMON_IMAGE_PNG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh {

struct Rgb8Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // row-major [height, width, 3]
};

// Deterministic: the same pixels always give the same bytes.
absl::StatusOr<std::string> EncodePng(const uint8_t* rgb, int width, int height);
absl::StatusOr<Rgb8Image> DecodePng(const std::string& png);

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_IMAGE_PNG_H_
