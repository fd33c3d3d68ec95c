// The c10d store ranks meet through (internal to the backends; keeps c10d out of comm.h).
#ifndef DIFFMESH_MODELS_PARALLEL_RENDEZVOUS_H_
#define DIFFMESH_MODELS_PARALLEL_RENDEZVOUS_H_

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <string>

#include "absl/status/statusor.h"
#include "models/parallel/comm.h"

namespace diffmesh::models::parallel {

// Connects to the TCPStore at options.master_addr:master_port; rank 0 serves it. Returns once
// all world_size ranks have connected (or UNAVAILABLE / DEADLINE_EXCEEDED after
// options.timeout).
//
// Rank 0's store listens on master_port of EVERY interface, not master_addr: LibTorch 1.13's
// TCPStoreOptions has no bind address (its TCPServer listens on the wildcard address). Newer
// LibTorch takes a socket the caller bound (TCPStoreOptions::masterListenFd), which would let
// this bind master_addr; until then, deployments limit who reaches the port (the chart's
// NetworkPolicy admits the group's own pods only).
absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectStore(const RendezvousOptions& options);

// Validates world_size ≥ 1, 0 ≤ rank < world_size, a port in [1, 65535].
absl::Status CheckRendezvous(const RendezvousOptions& options);

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_RENDEZVOUS_H_
