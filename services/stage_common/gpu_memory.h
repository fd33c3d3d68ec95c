// GPU memory housekeeping for the stage services that run LibTorch on CUDA.
#ifndef DIFFMESH_SERVICES_STAGE_COMMON_GPU_MEMORY_H_
#define DIFFMESH_SERVICES_STAGE_COMMON_GPU_MEMORY_H_

namespace diffmesh {

// Hands the blocks LibTorch's CUDA caching allocator keeps free back to the device, so that
// another process on the same GPU can have them (the encoder's activations, between requests,
// for the denoise stage's decode). Blocks in use stay. Nothing on a build without CUDA
// (DIFFMESH_WITH_CUDA) or a host without a CUDA device.
void ReleaseCachedGpuMemory();

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_STAGE_COMMON_GPU_MEMORY_H_
