// The exception boundary of the stage cores: LibTorch reports failures by throwing (c10::Error
// from a TORCH_CHECK deep inside an op, c10::OutOfMemoryError from the CUDA allocator); one that
// escapes a core ends the whole process (a gRPC thread has no handler), killing every request.
// The cores run each request's torch work through CatchTorchErrors and answer a status instead.
#ifndef DIFFMESH_SERVICES_STAGE_COMMON_TORCH_ERRORS_H_
#define DIFFMESH_SERVICES_STAGE_COMMON_TORCH_ERRORS_H_

#include <exception>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace diffmesh {

// RESOURCE_EXHAUSTED for an out-of-memory error (c10::OutOfMemoryError, std::bad_alloc, or a
// message saying "out of memory"), INTERNAL otherwise; the message names `what` (e.g.
// "denoise") and carries the exception's message without LibTorch's C++ backtrace.
absl::Status TorchExceptionStatus(absl::string_view what, const std::exception& e);

// Runs `f` (returning absl::Status or absl::StatusOr<T>); an exception it throws becomes
// TorchExceptionStatus(what, e).
template <typename F>
auto CatchTorchErrors(absl::string_view what, F&& f) -> decltype(f()) {
  try {
    return std::forward<F>(f)();
  } catch (const std::exception& e) {
    return TorchExceptionStatus(what, e);
  }
}

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_STAGE_COMMON_TORCH_ERRORS_H_
