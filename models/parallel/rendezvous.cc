#include "models/parallel/rendezvous.h"

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace diffmesh::models::parallel {

absl::Status CheckRendezvous(const RendezvousOptions& options) {
  if (options.world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("world_size ", options.world_size, " must be >= 1"));
  }
  if (options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", options.rank, " out of range [0, ",
                                                   options.world_size, ")"));
  }
  if (options.master_port < 1 || options.master_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("master_port ", options.master_port, " out of range [1, 65535]"));
  }
  if (options.timeout.count() <= 0) {
    return absl::InvalidArgumentError("rendezvous timeout must be positive");
  }
  return absl::OkStatus();
}

KvStoreOptions StoreOptionsFor(const RendezvousOptions& options, bool serve) {
  KvStoreOptions store;
  store.serve = serve;
  store.bind_host = options.bind_addr;
  if (options.rank != 0) {
    store.host = options.master_addr;
  } else if (options.bind_addr.empty() || options.bind_addr == "0.0.0.0") {
    store.host = "127.0.0.1";
  } else if (options.bind_addr == "::") {
    store.host = "::1";
  } else {
    store.host = options.bind_addr;
  }
  store.port = options.master_port;
  store.timeout = options.timeout;
  return store;
}

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectStore(const RendezvousOptions& options) {
  RETURN_IF_ERROR(CheckRendezvous(options));
  absl::StatusOr<c10::intrusive_ptr<c10d::Store>> opened =
      OpenKvStore(StoreOptionsFor(options, /*serve=*/options.rank == 0));
  if (!opened.ok()) {
    return absl::Status(opened.status().code(),
                        absl::StrCat("rendezvous (rank ", options.rank, " of ", options.world_size,
                                     "): ", opened.status().message()));
  }
  return opened;
}

}  // namespace diffmesh::models::parallel
