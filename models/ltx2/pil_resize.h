// Pillow's 8-bit bilinear resampling (Image.resize(size, Image.BILINEAR) with no box and no
// reducing_gap, libImaging/Resample.c as in Pillow 9.x), which diffusers' VaeImageProcessor
// applies to a PIL conditioning image before the LTX-2 video VAE encodes it. Reproduced to the
// byte: the triangle filter is widened by the scale when shrinking (antialiasing), weights are
// normalised then rounded to 22-bit fixed point, the horizontal pass runs first and its result
// is clipped to uint8 before the vertical pass.
#ifndef DIFFMESH_MODELS_LTX2_PIL_RESIZE_H_
#define DIFFMESH_MODELS_LTX2_PIL_RESIZE_H_

#include <cstdint>
#include <vector>

namespace diffmesh::models::ltx2 {

// `src` is row-major interleaved [in_height, in_width, channels] uint8 (channels 1..4, each
// resampled independently, as Pillow does for L / RGB without alpha); returns
// [out_height, out_width, channels]. All sizes must be >= 1.
std::vector<uint8_t> PilBilinearResize(const uint8_t* src, int in_height, int in_width,
                                       int channels, int out_height, int out_width);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_PIL_RESIZE_H_
