// Reading small files named by operators or snapshots (token files, pipeline and model configs,
// safetensors indexes) with a size bound, so that a wrong path (/dev/zero, a FIFO, a huge file)
// is an error naming the file instead of an allocation failure or a read that never ends.
// LibTorch-free.
#ifndef DIFFMESH_COMMON_FILE_FILE_H_
#define DIFFMESH_COMMON_FILE_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace diffmesh {

// The whole content of `path`, read by streaming: at most `max_bytes` + 1 bytes are ever read,
// so it works (and stops) on pipes and devices too. Errors, each naming the path:
//   NOT_FOUND          the file does not exist
//   PERMISSION_DENIED  it cannot be opened for reading
//   INVALID_ARGUMENT   it is a directory, or it holds more than `max_bytes` (names the limit)
//   UNKNOWN            a read error (the errno string)
absl::StatusOr<std::string> ReadFileBounded(const std::string& path, size_t max_bytes);

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_FILE_FILE_H_
