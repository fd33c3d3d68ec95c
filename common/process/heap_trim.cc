#include "common/process/heap_trim.h"

#include <malloc.h>

#include <atomic>
#include <cstdint>

#include "absl/time/clock.h"

namespace diffmesh {

bool TrimHeap(absl::Duration interval) {
  static std::atomic<int64_t> last_ns{INT64_MIN};
  const int64_t now = absl::GetCurrentTimeNanos();
  int64_t last = last_ns.load();
  if (last != INT64_MIN && now - last < absl::ToInt64Nanoseconds(interval)) return false;
  if (!last_ns.compare_exchange_strong(last, now)) return false;  // another thread trims
  malloc_trim(0);
  return true;
}

}  // namespace diffmesh
