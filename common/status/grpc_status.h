// The one place where absl::Status and grpc::Status meet.
#ifndef DIFFMESH_COMMON_STATUS_GRPC_STATUS_H_
#define DIFFMESH_COMMON_STATUS_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace diffmesh {

// Messages longer than this are cut (as TF Serving does) so that one bad request cannot
// produce an oversized trailer.
inline constexpr size_t kMaxStatusMessageBytes = 4096;

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_STATUS_GRPC_STATUS_H_
