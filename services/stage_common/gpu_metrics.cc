#include "services/stage_common/gpu_metrics.h"

#include <exception>
#include <string>
#include <vector>

#include "common/metrics/families.h"
#include "common/metrics/metrics.h"

#if defined(DIFFMESH_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace diffmesh {

std::shared_ptr<prometheus::Collectable> GpuMemoryCollector() {
#if defined(DIFFMESH_WITH_CUDA)
  if (c10::cuda::device_count() == 0) return nullptr;
  return std::make_shared<metrics::CallbackGauge>(
      metrics::kGpuMemoryBytes, metrics::kGpuMemoryBytesHelp, [] {
        std::vector<metrics::CallbackGauge::Sample> out;
        const int devices = c10::cuda::device_count();
        for (int d = 0; d < devices; ++d) {
          try {
            const auto stats =
                c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(d));
            // Entry 0 of each stat array is the aggregate over the small and large pools.
            const double reserved = static_cast<double>(stats.reserved_bytes[0].current);
            const double allocated = static_cast<double>(stats.allocated_bytes[0].current);
            if (reserved == 0) continue;  // a device this process holds nothing on
            const std::string device = std::to_string(d);
            out.push_back({{{"device", device}, {"state", "allocated"}}, allocated});
            out.push_back({{{"device", device}, {"state", "reserved"}}, reserved});
          } catch (const std::exception&) {
            // The allocator is initialised with the first CUDA tensor: nothing to report yet.
          }
        }
        return out;
      });
#else
  return nullptr;
#endif
}

}  // namespace diffmesh
