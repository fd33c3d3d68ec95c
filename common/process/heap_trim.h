// Hands the free memory malloc keeps in its arenas back to the system.
//
// glibc keeps freed blocks in its arenas and returns only the free space at the top of each
// heap. A stage that buffers requests (the denoise service holds every queued request's
// embeddings while one runs) reaches a high-water mark under a burst and keeps it: in the soak
// the denoise process held 412 MiB free against 99 MiB in use, and its RSS crept up at constant
// load. malloc_trim(0) releases every free page, in the middle of a heap too.
#ifndef DIFFMESH_COMMON_PROCESS_HEAP_TRIM_H_
#define DIFFMESH_COMMON_PROCESS_HEAP_TRIM_H_

#include <cstdint>
#include <optional>

#include "absl/time/time.h"

namespace diffmesh {

// Trims the heap unless the process trimmed less than `interval` ago (calls that finish in a
// burst, e.g. rejected ones, trim once). Thread-safe; returns whether it trimmed.
bool TrimHeap(absl::Duration interval = absl::Seconds(1));

// This process's resident set size in bytes (/proc/self/statm); nullopt where it cannot be read.
std::optional<int64_t> ResidentBytes();

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_PROCESS_HEAP_TRIM_H_
