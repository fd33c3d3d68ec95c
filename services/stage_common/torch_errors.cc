#include "services/stage_common/torch_errors.h"

#include <c10/util/Exception.h>

#include <new>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace diffmesh {

absl::Status TorchExceptionStatus(absl::string_view what, const std::exception& e) {
  const auto* torch = dynamic_cast<const c10::Error*>(&e);
  const std::string message = torch != nullptr ? torch->what_without_backtrace() : e.what();
  const bool oom = dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr ||
                   dynamic_cast<const std::bad_alloc*>(&e) != nullptr ||
                   absl::StrContains(message, "out of memory");
  const std::string text = absl::StrCat(what, " failed: ", message);
  return oom ? absl::ResourceExhaustedError(text) : absl::InternalError(text);
}

}  // namespace diffmesh
