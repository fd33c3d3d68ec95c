// The key-value store a group's ranks meet through, served by rank 0 on the address it is given.
//
// c10d's TCPStore (LibTorch 1.13) listens on every interface and takes no bind address, so a
// group's rendezvous was open to anyone who could reach the port. This store is a c10d::Store
// (Gloo's rendezvous, NCCL's id exchange and the group membership use it as they used
// TCPStore) whose server (common/kvstore/kv_server.h) binds the address in its options:
// loopback by default.
//
// Waits (get of a missing key, wait, check loops) are polled by the client with a short backoff
// up to the store's timeout; a timeout throws an exception whose message says "Timeout", as
// TCPStore's do. Requests are length-prefixed frames over one connection per client, one at a
// time (a mutex); the server is one thread polling every connection.
#ifndef DIFFMESH_MODELS_PARALLEL_KV_STORE_H_
#define DIFFMESH_MODELS_PARALLEL_KV_STORE_H_

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace diffmesh::models::parallel {

struct KvStoreOptions {
  // Where this client reaches the server.
  std::string host = "127.0.0.1";
  int port = 0;
  // Serve the store in this process, listening on `bind_host` ("0.0.0.0" or "::": every
  // interface) at `port`.
  bool serve = false;
  std::string bind_host = "127.0.0.1";
  // Bounds the connection (the server may start later) and every wait.
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
};

// UNAVAILABLE when the server cannot listen or be reached within the timeout (DEADLINE_EXCEEDED).
absl::StatusOr<c10::intrusive_ptr<c10d::Store>> OpenKvStore(const KvStoreOptions& options);

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_KV_STORE_H_
