// The c10d store ranks meet through (internal to the backends; keeps c10d out of comm.h).
#ifndef DIFFMESH_MODELS_PARALLEL_RENDEZVOUS_H_
#define DIFFMESH_MODELS_PARALLEL_RENDEZVOUS_H_

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <string>

#include "absl/status/statusor.h"
#include "models/parallel/comm.h"
#include "models/parallel/kv_store.h"

namespace diffmesh::models::parallel {

// Connects to the group's store (kv_store.h): rank 0 serves it on options.bind_addr and reaches
// it there (loopback for a wildcard address), the other ranks at options.master_addr. Every port
// is master_port. UNAVAILABLE when rank 0 cannot listen, DEADLINE_EXCEEDED when the store cannot
// be reached within options.timeout. The ranks wait for each other later, in the backends'
// rendezvous over the store.
absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectStore(const RendezvousOptions& options);

// How this rank opens the group's store: serving it (rank 0, when `serve`) on options.bind_addr,
// reaching it there if rank 0 (loopback for a wildcard address: its advertised name may not
// resolve yet), else at options.master_addr; port master_port, timeout options.timeout.
KvStoreOptions StoreOptionsFor(const RendezvousOptions& options, bool serve);

// Validates world_size ≥ 1, 0 ≤ rank < world_size, a port in [1, 65535].
absl::Status CheckRendezvous(const RendezvousOptions& options);

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_RENDEZVOUS_H_
