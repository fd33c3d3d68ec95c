#include "models/parallel/rendezvous.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <exception>

#include "absl/strings/match.h"
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

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectStore(const RendezvousOptions& options) {
  RETURN_IF_ERROR(CheckRendezvous(options));
  // TCPStoreOptions exists with these fields in 1.13 and 2.x (2.x adds e.g. useLibUV, whose
  // default we keep).
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(options.master_port);
  store_options.isServer = options.rank == 0;
  store_options.numWorkers = static_cast<std::size_t>(options.world_size);
  store_options.waitWorkers = true;
  store_options.timeout = options.timeout;
  try {
    return c10::intrusive_ptr<c10d::Store>(
        c10::make_intrusive<c10d::TCPStore>(options.master_addr, store_options));
  } catch (const std::exception& e) {
    const std::string message =
        absl::StrCat("rendezvous at ", options.master_addr, ":", options.master_port, " (rank ",
                     options.rank, " of ", options.world_size, "): ", e.what());
    if (absl::StrContains(e.what(), "imed out") || absl::StrContains(e.what(), "imeout")) {
      return absl::DeadlineExceededError(message);
    }
    return absl::UnavailableError(message);
  }
}

}  // namespace diffmesh::models::parallel
