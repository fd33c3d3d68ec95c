// diffmesh_gpu_memory_bytes for the stage services that run LibTorch on CUDA.
#ifndef DIFFMESH_SERVICES_STAGE_COMMON_GPU_METRICS_H_
#define DIFFMESH_SERVICES_STAGE_COMMON_GPU_METRICS_H_

#include <memory>

#include "prometheus/collectable.h"

namespace diffmesh {

// diffmesh_gpu_memory_bytes{device, state="allocated|reserved"}: this process's LibTorch CUDA
// caching allocator, read at scrape time, for each device it holds memory on. Null on a build
// without CUDA (DIFFMESH_WITH_CUDA) or a host without a CUDA device: nothing to report.
std::shared_ptr<prometheus::Collectable> GpuMemoryCollector();

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_STAGE_COMMON_GPU_METRICS_H_
