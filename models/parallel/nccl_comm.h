// NCCL backend (CUDA tensors): raw NCCL communicators, operations on the current CUDA stream.
//
// Completion follows CUDA stream semantics: a call returns once its work is ENQUEUED on the
// current stream of the communicator's device (c10::cuda::getCurrentCUDAStream); results are
// valid for later work on that stream, and host reads need a synchronization (Barrier and
// BroadcastBytes synchronize). Staging buffers for non-contiguous tensors are allocated and
// copied on the same stream, so the caching allocator's stream-ordered reuse keeps them valid.
// Tensors the caller made on another stream must be synchronized with it by the caller.
// A Status reports errors detected when enqueuing; failures inside the kernels (a peer died, a
// network error) surface through CheckAsyncError().
//
// Send/Recv tags are not NCCL concepts: sends and receives between two ranks pair up in issue
// order, as in torch.distributed's NCCL backend.
#ifndef DIFFMESH_MODELS_PARALLEL_NCCL_COMM_H_
#define DIFFMESH_MODELS_PARALLEL_NCCL_COMM_H_

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/parallel/comm.h"

struct ncclComm;  // nccl.h: typedef struct ncclComm* ncclComm_t;

namespace diffmesh::models::parallel {

struct NcclOptions {
  // CUDA device of this rank; −1: rank % (number of visible devices).
  int device = -1;
  // By default the destructor does not touch NCCL: at process exit the CUDA context may already
  // be gone, and ncclCommDestroy/Abort can then hang or crash (c10d's NCCLUtils holds back for
  // the same reason); the driver reclaims the resources when the process ends. Set this to
  // abort the communicator in the destructor, or call Abort()/Destroy() yourself when a group
  // is torn down while the process lives on.
  bool abort_in_destructor = false;
};

class NcclCommunicator final : public Communicator {
 public:
  // Joins the rendezvous (rank 0 serves the TCPStore, creates the ncclUniqueId and publishes
  // it there) and initializes the NCCL communicator, which blocks until all ranks have joined.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(
      const RendezvousOptions& options, const NcclOptions& nccl = {});
  // The same over a store the caller already holds, under its own `prefix` (a generation of a
  // group that re-forms; see gloo_comm.h's CreateGlooCommunicatorOnStore).
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> CreateOnStore(
      c10::intrusive_ptr<c10d::Store> store, const std::string& prefix,
      const RendezvousOptions& options, const NcclOptions& nccl = {});

  ~NcclCommunicator() override;

  const char* backend() const override { return "nccl"; }
  at::Device device() const override;

  // ncclCommAbort: stops outstanding work (e.g. after a peer failed or CheckAsyncError
  // reported an error). The communicator is unusable afterwards (FAILED_PRECONDITION).
  absl::Status Abort();
  // ncclCommDestroy: frees the communicator once its enqueued work is done (ncclCommFinalize
  // first where NCCL has it). Unusable afterwards.
  absl::Status Destroy();
  // ncclCommGetAsyncError: OK while no asynchronous error has occurred.
  absl::Status CheckAsyncError();
  // False after Abort() / Destroy().
  bool usable() const { return comm_ != nullptr; }

 protected:
  absl::Status DoAllReduce(at::Tensor& tensor, ReduceOp op) override;
  absl::Status DoAllGather(at::Tensor& output, const at::Tensor& input) override;
  absl::Status DoAllToAll(at::Tensor& output, const at::Tensor& input,
                          const std::vector<int64_t>& output_splits,
                          const std::vector<int64_t>& input_splits) override;
  absl::Status DoBroadcast(at::Tensor& tensor, int root) override;
  absl::Status DoSend(const at::Tensor& tensor, int peer, int tag) override;
  absl::Status DoRecv(at::Tensor& tensor, int peer, int tag) override;
  absl::Status DoSendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src,
                          int tag) override;
  absl::Status DoBarrier() override;
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(const std::vector<int>& ranks,
                                                        int new_rank) override;

 private:
  NcclCommunicator(int rank, int size, int device, ncclComm* comm,
                   c10::intrusive_ptr<c10d::Store> store, const NcclOptions& options);

  // Creates the communicator of `size` ranks whose rank 0 publishes the unique id in `store`.
  static absl::StatusOr<ncclComm*> InitComm(c10d::Store& store, int rank, int size, int device);

  absl::Status Usable() const;

  int device_;
  ncclComm* comm_;
  c10::intrusive_ptr<c10d::Store> store_;
  NcclOptions options_;
  int64_t splits_ = 0;
};

// Create() as a plain Communicator.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    const RendezvousOptions& options, const NcclOptions& nccl = {});

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_NCCL_COMM_H_
