#include "common/process/heap_trim.h"

#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>

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

std::optional<int64_t> ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return std::nullopt;
  unsigned long size = 0, pages = 0;
  const bool read = std::fscanf(f, "%lu %lu", &size, &pages) == 2;
  std::fclose(f);
  if (!read) return std::nullopt;
  return static_cast<int64_t>(pages) * sysconf(_SC_PAGESIZE);
}

}  // namespace diffmesh
