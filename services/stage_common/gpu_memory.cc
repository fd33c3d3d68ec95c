#include "services/stage_common/gpu_memory.h"

#if defined(DIFFMESH_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <exception>
#endif

namespace diffmesh {

void ReleaseCachedGpuMemory() {
#if defined(DIFFMESH_WITH_CUDA)
  if (c10::cuda::device_count() == 0) return;
  try {
    c10::cuda::CUDACachingAllocator::emptyCache();
  } catch (const std::exception&) {
    // The allocator is initialised with the first CUDA tensor: nothing cached yet.
  }
#endif
}

}  // namespace diffmesh
