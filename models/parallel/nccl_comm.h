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
// Wait limit (comm.h's WaitLimit, the same contract as the Gloo backend's): the communicator is
// NCCL's non-blocking kind (ncclConfig_t.blocking = 0), so no NCCL call blocks the host; a call
// still in progress (connection set-up at first use) is polled with ncclCommGetAsyncError. Once a
// WaitLimit is set, every operation records a CUDA event after its kernels, and a watchdog
// thread of this communicator polls the oldest unfinished one every kWaitPollInterval with
// ncclCommGetAsyncError and the limit. When the limit ends (the request's deadline passed, or the
// group's membership aborted it: a peer lost) or NCCL reports an asynchronous error while an
// operation is unfinished, the watchdog calls ncclCommAbort: the kernels waiting on the peer
// return, so host waits on the stream (.item(), .cpu(), synchronizations) return too, with
// undefined data. Every later call, and the host waits of this class (Barrier, BroadcastBytes'
// length), then return that status, naming the operation and the limit; the communicator is
// unusable and its owner replaces the generation (DenoiseGroup re-forms it, as for Gloo).
// Initialization (ncclCommInitRankConfig) is bounded by the rendezvous timeout and the limit.
//
// Send/Recv tags are not NCCL concepts: sends and receives between two ranks pair up in issue
// order, as in torch.distributed's NCCL backend.
#ifndef DIFFMESH_MODELS_PARALLEL_NCCL_COMM_H_
#define DIFFMESH_MODELS_PARALLEL_NCCL_COMM_H_

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "models/parallel/comm.h"

struct ncclComm;   // nccl.h: typedef struct ncclComm* ncclComm_t;
struct CUevent_st; // cuda_runtime_api.h: typedef struct CUevent_st* cudaEvent_t;
struct CUstream_st;

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
  // Joins the rendezvous (rank 0 serves the store, kv_store.h, creates the ncclUniqueId and publishes
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
  // reported an error). The communicator is unusable afterwards (FAILED_PRECONDITION). The
  // watchdog does the same on its own when the wait limit ends (see the top of this file).
  absl::Status Abort();
  // ncclCommDestroy: frees the communicator once its enqueued work is done (ncclCommFinalize
  // first where NCCL has it). Unusable afterwards.
  absl::Status Destroy();
  // ncclCommGetAsyncError: OK while no asynchronous error has occurred.
  absl::Status CheckAsyncError();
  // False after Abort() / Destroy() or the watchdog's abort.
  bool usable() const;

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
  absl::Status DoSynchronize(const char* op) override;
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(const std::vector<int>& ranks,
                                                        int new_rank) override;

 private:
  // An enqueued operation under a wait limit, until its event completes.
  struct Pending {
    CUevent_st* event;
    const char* op;
    std::shared_ptr<WaitLimit> limit;
  };

  NcclCommunicator(int rank, int size, int device, ncclComm* comm,
                   c10::intrusive_ptr<c10d::Store> store, const NcclOptions& options,
                   std::chrono::milliseconds timeout);

  // Creates the non-blocking communicator of `size` ranks whose rank 0 publishes the unique id
  // in `store`; gives up (aborting it) at `until` or when `limit` (may be null) ends.
  static absl::StatusOr<ncclComm*> InitComm(c10d::Store& store, int rank, int size, int device,
                                            absl::Time until, const WaitLimit* limit);

  // Runs `enqueue` (the NCCL calls of one operation on comm_ and the current stream) under
  // mu_, waits for a call still in progress to settle, and under a wait limit hands the
  // operation to the watchdog.
  absl::Status Launch(const char* op,
                      const std::function<absl::Status(ncclComm*, CUstream_st*)>& enqueue);
  // Polls ncclCommGetAsyncError until the last call on comm_ is no longer in progress.
  absl::Status Settle(const char* op, const WaitLimit* limit);
  // Under mu_: why waiting for `op` must stop (an asynchronous NCCL error, the limit's
  // status), or OK.
  absl::Status StopReasonLocked(const char* op, const WaitLimit* limit);
  // Under mu_: ncclCommAbort, remembering `why` for every later call.
  void AbortLocked(absl::Status why);
  absl::Status UsableLocked() const;
  void Watch();

  const int device_;
  const c10::intrusive_ptr<c10d::Store> store_;
  const NcclOptions options_;
  const std::chrono::milliseconds timeout_;  // bounds the initialization of split communicators
  int64_t splits_ = 0;

  mutable std::mutex mu_;
  ncclComm* comm_;          // null once aborted or destroyed
  absl::Status aborted_;    // why, when the watchdog or a wait aborted comm_
  std::deque<Pending> pending_;     // oldest first
  std::vector<CUevent_st*> spare_;  // completed events, for reuse
  bool stopping_ = false;
  std::condition_variable wake_;
  std::thread watchdog_;
};

// Create() as a plain Communicator.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    const RendezvousOptions& options, const NcclOptions& nccl = {});

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_NCCL_COMM_H_
