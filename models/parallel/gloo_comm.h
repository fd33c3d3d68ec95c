// Gloo backend (CPU tensors) through LibTorch's c10d::ProcessGroupGloo.
#ifndef DIFFMESH_MODELS_PARALLEL_GLOO_COMM_H_
#define DIFFMESH_MODELS_PARALLEL_GLOO_COMM_H_

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "models/parallel/comm.h"

namespace diffmesh::models::parallel {

struct GlooOptions {
  // Address Gloo's TCP transport binds to and advertises to peers. Empty: 127.0.0.1 when the
  // master address is a loopback one (all ranks on this host), else the address this host's
  // name resolves to (c10d's default device).
  std::string bind_address;
  // Worker threads of each process group.
  int threads = 2;
};

// Joins the rendezvous of options.world_size ranks (rank 0 serves the store, kv_store.h) and connects a
// Gloo process group over all of them. Blocks until every rank has joined or options.timeout
// passes. Operations accept CPU tensors of any dtype (reductions: floating and integral dtypes;
// those Gloo lacks, such as bfloat16 and bool, are reduced in float32 / int64 and cast back).
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    const RendezvousOptions& options, const GlooOptions& gloo = {});

// The same over a store the caller already holds (see rendezvous.h), under its own `prefix`:
// a group that re-forms connects each generation under a fresh prefix of one store.
// options.master_addr only picks the transport address (as above); the store is not dialled.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicatorOnStore(
    c10::intrusive_ptr<c10d::Store> store, const std::string& prefix,
    const RendezvousOptions& options, const GlooOptions& gloo = {});

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_GLOO_COMM_H_
