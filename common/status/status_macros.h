// Small status helpers; Debian's Abseil (20220623) ships no RETURN_IF_ERROR.
#ifndef DIFFMESH_COMMON_STATUS_STATUS_MACROS_H_
#define DIFFMESH_COMMON_STATUS_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DIFFMESH_STATUS_CONCAT_INNER_(a, b) a##b
#define DIFFMESH_STATUS_CONCAT_(a, b) DIFFMESH_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` yields a non-OK absl::Status.
#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    ::absl::Status _diffmesh_status = (expr);       \
    if (!_diffmesh_status.ok()) return _diffmesh_status; \
  } while (0)

// ASSIGN_OR_RETURN(auto x, MakeX()); returns the error of a non-OK StatusOr.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(DIFFMESH_STATUS_CONCAT_(_diffmesh_statusor_, __LINE__), lhs, rexpr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                           \
  if (!statusor.ok()) return statusor.status();      \
  lhs = std::move(statusor).value()

#endif  // DIFFMESH_COMMON_STATUS_STATUS_MACROS_H_
