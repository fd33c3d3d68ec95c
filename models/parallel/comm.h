// Collective communication over at::Tensor for the denoise group, with backends for Gloo (CPU,
// through LibTorch's c10d) and NCCL (CUDA). No gRPC here: this is the data plane between ranks.
//
// Contract shared by every backend (enforced here, in the non-virtual public methods):
//  * Inputs may have any strides (transposed, sliced, strided views): non-contiguous inputs are
//    staged into a contiguous copy.
//  * Outputs and in-place operands stay the caller's tensors: when one is not contiguous the
//    backend works on a contiguous staging buffer and the result is copied back into it, so an
//    all-reduce on a view writes through to its base. (The reference system called
//    .contiguous() and reduced the copy, which silently dropped in-place results.)
//  * Outputs with internal overlap (expand()ed, stride 0) are rejected: they cannot hold a
//    distinct value per element.
//  * Every rank of a communicator calls the same collectives in the same order with matching
//    shapes and dtypes; a communicator is used by one thread at a time.
//  * Errors come back as absl::Status; nothing throws across this API.
//
// Completion: Gloo operations are complete on return. NCCL operations are enqueued on the
// current CUDA stream and complete in stream order (see nccl_comm.h); host-side results
// (BroadcastBytes) synchronize.
#ifndef DIFFMESH_MODELS_PARALLEL_COMM_H_
#define DIFFMESH_MODELS_PARALLEL_COMM_H_

#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace diffmesh::models::parallel {

enum class ReduceOp { kSum, kAvg, kMax, kMin };

const char* ReduceOpName(ReduceOp op);

// Where ranks meet: a key-value store (kv_store.h) served by rank 0 on bind_addr:master_port and
// reached at master_addr:master_port. The Gloo backend connects its process group through it and
// the NCCL backend exchanges its ncclUniqueId through it; sub-communicators use prefixes of the
// same store.
struct RendezvousOptions {
  int world_size = 1;
  int rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Where rank 0's store listens: an address of rank 0's host, "0.0.0.0" or "::" for every
  // interface. Loopback by default, as the stage services' --host.
  std::string bind_addr = "127.0.0.1";
  // Bounds the rendezvous and every later operation (Gloo: each collective).
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

// Ends a communicator's waits early: a backend that supports it (Gloo; NCCL through its
// watchdog, nccl_comm.h) polls Check() while an operation waits (every kWaitPollInterval) and
// returns its status once it is not OK, so a dead or stopped peer, or a request's deadline,
// bounds every wait rather than the backend's own timeout. After such an early return the ranks
// are no longer in step: the communicator (and every one split from it, which shares its
// WaitLimit) must be replaced. Thread-safe.
class WaitLimit {
 public:
  // Sticky: every later Check() returns `why` (which must not be OK).
  void Abort(absl::Status why);
  // Waits end with DEADLINE_EXCEEDED once `deadline` passes; absl::InfiniteFuture(): none.
  void SetDeadline(absl::Time deadline);
  absl::Time deadline() const;
  // OK while waiting may go on.
  absl::Status Check() const;
  bool aborted() const;

  // For a wait that cannot be polled (Gloo's point-to-point operations, whose timed-out wait
  // is fatal to the process group) but can be woken: while the returned registration lives,
  // Abort() also calls `wake` (once, on the aborting thread); on this thread at once when the
  // limit is already aborted. Destroying the registration waits for a `wake` under way.
  class Registration;
  [[nodiscard]] std::unique_ptr<Registration> OnAbort(std::function<void()> wake);

 private:
  using Listeners = std::list<std::function<void()>>;

  mutable absl::Mutex mu_;
  absl::Status aborted_ ABSL_GUARDED_BY(mu_);
  absl::Time deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  // Serializes the calls of listeners with their removal (never held with mu_ the other way).
  absl::Mutex listeners_mu_;
  Listeners listeners_ ABSL_GUARDED_BY(listeners_mu_);
};

class WaitLimit::Registration {
 public:
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;
  ~Registration();

 private:
  friend class WaitLimit;
  Registration(WaitLimit* limit, Listeners::iterator it) : limit_(limit), it_(it) {}
  WaitLimit* limit_;  // null: the listener already ran (the limit was aborted at registration)
  Listeners::iterator it_;
};

inline constexpr absl::Duration kWaitPollInterval = absl::Milliseconds(50);

class Communicator {
 public:
  virtual ~Communicator() = default;

  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // "gloo", "nccl" or "single".
  virtual const char* backend() const = 0;
  // Device every tensor passed to this communicator must live on.
  virtual at::Device device() const = 0;

  // In place: `tensor` becomes the element-wise reduction over the group. kAvg needs a
  // floating dtype.
  absl::Status AllReduce(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);

  // input [N, ...] → [size·N, ...], rank r's input at rows [r·N, (r+1)·N).
  absl::StatusOr<at::Tensor> AllGather(const at::Tensor& input);
  // Same into a caller-provided `output` [size·N, ...] of input's dtype (any strides; it may
  // alias `input`, e.g. input = output.narrow(0, rank·N, N)).
  absl::Status AllGatherInto(at::Tensor& output, const at::Tensor& input);
  // → `size` tensors shaped like input, element r from rank r.
  absl::StatusOr<std::vector<at::Tensor>> AllGatherList(const at::Tensor& input);

  // Splits input's dim 0 into `size` chunks, sends chunk j to rank j and concatenates the
  // chunks received from ranks 0..size−1 along dim 0. With no split sizes dim 0 must divide by
  // `size` (equal chunks). input_splits (rows per destination) must sum to input.size(0);
  // output_splits (rows per source) may be left empty, then they are exchanged first.
  absl::StatusOr<at::Tensor> AllToAllSingle(const at::Tensor& input,
                                            const std::vector<int64_t>& output_splits = {},
                                            const std::vector<int64_t>& input_splits = {});
  // Same into a caller-provided `output` (any strides; an `output` overlapping `input` is
  // handled by staging the input).
  absl::Status AllToAllSingleInto(at::Tensor& output, const at::Tensor& input,
                                  const std::vector<int64_t>& output_splits = {},
                                  const std::vector<int64_t>& input_splits = {});

  // In place: every rank's `tensor` receives root's.
  absl::Status Broadcast(at::Tensor& tensor, int root);

  // Point to point; the receiver's `tensor` (any strides) must match the sender's shape and
  // dtype. Send and Recv with the same tag pair up in order.
  absl::Status Send(const at::Tensor& tensor, int peer, int tag = 0);
  absl::Status Recv(at::Tensor& tensor, int peer, int tag = 0);
  // Sends `send` to `dst` and receives `recv` from `src` as one operation: the ring step of ring
  // attention, where every rank sends to its successor and receives from its predecessor at
  // once (two separate blocking calls would deadlock on NCCL). `recv` must not overlap `send`.
  absl::Status SendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src, int tag = 0);

  absl::Status Barrier();

  // Small host-side payloads (serialized requests) from `root`: the length goes first, then the
  // bytes; `*bytes` is replaced on every other rank.
  absl::Status BroadcastBytes(std::string* bytes, int root);

  // A communicator over `ranks` (ranks of this communicator; the position in the list becomes
  // the rank in the new one). Collective over THIS communicator: every rank calls Split with
  // the same lists in the same order, members and non-members alike; non-members get nullptr.
  // Only the members of one group talk to each other, so groups that partition the world
  // (RankLayout::AllGroups) can be created one after another without deadlock.
  absl::StatusOr<std::unique_ptr<Communicator>> Split(const std::vector<int>& ranks);

  // The limit this communicator's waits observe (null: none). Communicators split from this one
  // later share it.
  void set_wait_limit(std::shared_ptr<WaitLimit> limit) { wait_limit_ = std::move(limit); }
  const std::shared_ptr<WaitLimit>& wait_limit() const { return wait_limit_; }

 protected:
  Communicator(int rank, int size) : rank_(rank), size_(size) {}

  // Backend primitives. Every tensor is contiguous, on device(), validated (shapes, dtypes,
  // peers) and, for outputs, not overlapping the inputs.
  virtual absl::Status DoAllReduce(at::Tensor& tensor, ReduceOp op) = 0;
  // output [size·N, ...]
  virtual absl::Status DoAllGather(at::Tensor& output, const at::Tensor& input) = 0;
  // Splits are always given, in rows of dim 0.
  virtual absl::Status DoAllToAll(at::Tensor& output, const at::Tensor& input,
                                  const std::vector<int64_t>& output_splits,
                                  const std::vector<int64_t>& input_splits) = 0;
  virtual absl::Status DoBroadcast(at::Tensor& tensor, int root) = 0;
  virtual absl::Status DoSend(const at::Tensor& tensor, int peer, int tag) = 0;
  virtual absl::Status DoRecv(at::Tensor& tensor, int peer, int tag) = 0;
  virtual absl::Status DoSendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src,
                                  int tag) = 0;
  virtual absl::Status DoBarrier() = 0;
  // Waits on the host until this rank's enqueued operations are done (`op` names the caller for
  // errors). Backends whose operations are complete on return (Gloo) need nothing; NCCL polls
  // within the wait limit, so a host read after it sees finished data or gets the error.
  virtual absl::Status DoSynchronize(const char* /*op*/) { return absl::OkStatus(); }
  // Called on every rank with a validated, duplicate-free `ranks`; `new_rank` is this rank's
  // index in it or −1 for a non-member (which must return nullptr without communicating).
  // Groups of one rank are handled here, without calling the backend.
  virtual absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(const std::vector<int>& ranks,
                                                                int new_rank) = 0;

 private:
  absl::Status CheckTensor(const at::Tensor& tensor, const char* what) const;
  absl::Status CheckPeer(int peer, const char* what) const;

  int rank_;
  int size_;
  std::shared_ptr<WaitLimit> wait_limit_;
};

// A group of one: every collective is the identity (copies where an output is separate), point
// to point is an error. Used for groups of one rank and for single-rank runs.
std::unique_ptr<Communicator> CreateSingleRankCommunicator(at::Device device = at::kCPU);

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_COMM_H_
