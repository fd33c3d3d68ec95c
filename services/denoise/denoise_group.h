// The ranks of the denoise group and how they work together: the rank layout (tp fastest,
// then ulysses, ring, cfg), one communicator per axis, rank 0's commands to the others
// (main-rank-then-broadcast: a request reaches rank 0 over gRPC once and is broadcast, never
// recomputed per rank), CFG branches dispatched over the cfg ranks and gathered back, and the
// collectives the DiT needs for tensor and sequence parallelism. gRPC-free.
#ifndef DIFFMESH_SERVICES_DENOISE_DENOISE_GROUP_H_
#define DIFFMESH_SERVICES_DENOISE_DENOISE_GROUP_H_

#include <ATen/ATen.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/call/call_context.h"
#include "common/call/fifo_lock.h"
#include "models/glm_image/dit.h"
#include "models/parallel/comm.h"
#include "models/parallel/comm_membership.h"
#include "models/parallel/groups.h"
#include "models/parallel/layout.h"
#include "services/denoise/cfg_policy.h"

namespace diffmesh {

struct DenoiseGroupOptions {
  // Degrees of parallelism; world = tp × ulysses × ring × cfg.
  models::parallel::ParallelConfig parallel;
  // Where the ranks meet (ignored for a group of one).
  models::parallel::RendezvousOptions rendezvous;
  // Attention heads of the DiT (checked against ulysses × tp); 0: not checked here, the model
  // splits its heads itself (LTX-2, models/parallel/layout.h).
  int num_heads = 1;
  // Run on CUDA (one GPU per rank, NCCL between ranks) instead of the CPU (Gloo).
  bool cuda = false;
  // Rank 0 pings idle ranks this often so their waits never reach the collective timeout.
  absl::Duration keepalive = absl::Seconds(10);
  // Heartbeats between the ranks, beside the collectives (models/parallel/comm_membership.h):
  // a rank silent for heartbeat_timeout is lost, its group ends and re-forms once it is back.
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  absl::Duration heartbeat_timeout = absl::Seconds(4);
};

// This process's denoise-group health, for its health service: rank 0 serves while its group
// is whole, another rank while it is in a formed group. `listener` is called from the group's
// threads on every change (why: the reason when not serving). Set it before the group exists.
void SetDenoiseGroupHealthListener(std::function<void(bool serving, const std::string& why)> listener);

// How often a request waiting for the group looks at its cancellation (DenoiseGroup::Send).
inline constexpr absl::Duration kGroupWaitSlice = absl::Milliseconds(100);

class DenoiseGroup {
 public:
  // kRun carries a whole request. A streamed request is kBegin (the request without its
  // tensors), then kTokens / kEmbeddings pieces as they reach rank 0, then kGo (run it) or
  // kAbort (drop it).
  enum class Command : uint8_t {
    kPing = 0, kRun = 1, kStop = 2, kBegin = 3, kTokens = 4, kEmbeddings = 5, kGo = 6, kAbort = 7
  };

  // Collective over all ranks (each process calls it with its own rank).
  static absl::StatusOr<std::unique_ptr<DenoiseGroup>> Create(const DenoiseGroupOptions& options);
  // Rank 0 tells the other ranks to stop.
  ~DenoiseGroup();

  const models::parallel::RankLayout& layout() const { return layout_; }
  bool is_main() const { return layout_.rank() == 0; }
  // Where this rank computes (cuda:<rank % visible GPUs> or the CPU).
  at::Device device() const { return device_; }
  int world_size() const { return layout_.world_size(); }

  // Rank 0: sends a command (and payload) to every rank for the call `ctx`. Holds the group until
  // Release(); waits for it while another request holds it, until ctx's deadline (then
  // DEADLINE_EXCEEDED) or until ctx is cancelled (CANCELLED; the wait is polled, so a cancelled
  // request leaves the queue within kGroupWaitSlice). UNAVAILABLE (naming the lost rank) while
  // the group is incomplete. Until Release(), every collective wait of this rank ends by the
  // deadline (plus a short grace, so a healthy step can finish and stop at the next
  // AgreeToContinue); a wait ended so ends the group's generation.
  absl::Status Send(Command command, const std::string& payload, const CallContext& ctx);
  // Rank 0, while holding the group after Send: one more command of the same request (the
  // keepalive cannot ping while the group is held, so a long wait sends kPing itself).
  absl::Status SendMore(Command command, const std::string& payload);
  void Release();
  // Other ranks: the next command from rank 0 (pings are answered internally). Joins the next
  // generation of the group first when the last one ended (blocks until rank 0 invites).
  absl::StatusOr<std::pair<Command, std::string>> Receive();

  // Rank 0 decides, every rank learns: whether the request goes on (cancellation, deadlines).
  absl::StatusOr<bool> AgreeToContinue(bool main_decision);

  // Runs this rank's CFG branches with `forward` (a rank without branches runs none) and
  // returns every branch's prediction in branch order, on every rank. `like` is a tensor of a
  // prediction's shape and dtype.
  absl::StatusOr<std::vector<at::Tensor>> RunBranches(
      const CfgPolicy& policy, const std::function<at::Tensor(const CfgBranch&)>& forward,
      const at::Tensor& like);

  // In place: `tensor` becomes the sum of every cfg rank's (ranks with the same tp and sp
  // coordinates). Every cfg rank calls it with the same shape and dtype, idle ones with zeros;
  // the identity when the cfg degree is 1. (LTX-2's partial guidance sums, ltx2_denoise.cc.)
  absl::Status CfgAllReduce(at::Tensor& tensor);

  // The tp / sp collectives for this rank's DiT forward (empty functions where degree 1).
  const models::glm_image::DitCollectives& dit_collectives() const { return collectives_; }

  // This rank's tensor-parallel, Ulysses and ring communicators, for a model that runs its own
  // sharded forward (LTX-2); null where the degree is 1. Owned by the group.
  models::parallel::Communicator* tp_group() const {
    return options_.parallel.tp > 1 ? groups_.tp.get() : nullptr;
  }
  models::parallel::Communicator* ulysses_group() const {
    return options_.parallel.ulysses > 1 ? groups_.ulysses.get() : nullptr;
  }
  models::parallel::Communicator* ring_group() const {
    return options_.parallel.ring > 1 ? groups_.ring.get() : nullptr;
  }

 private:
  DenoiseGroup(const DenoiseGroupOptions& options, models::parallel::RankLayout layout);
  // Joins the next generation and splits its groups (rank 0: under mu_, every rank waiting).
  absl::Status Form(absl::Time until);
  // Hands the communicators of an ended generation to a thread that destroys them (a Gloo
  // process group's destructor waits for an operation given up on).
  void Drop();
  // After a failed collective: ends the generation and returns the status to report (rank 0:
  // UNAVAILABLE naming the lost rank once the heartbeats show it).
  absl::Status Failed(const absl::Status& s);
  // Throws with the status message (the DiT forward has no Status path), remembering it.
  void ThrowIfError(const absl::Status& s);
  // Rank 0: re-forms the group after a loss, and pings idle ranks.
  void HealLoop();
  bool WaitStop(absl::Duration d);

  const DenoiseGroupOptions options_;
  models::parallel::RankLayout layout_;
  at::Device device_ = at::kCPU;
  std::unique_ptr<models::parallel::Membership> membership_;
  std::unique_ptr<models::parallel::Communicator> world_;
  models::parallel::ParallelGroups groups_;
  models::glm_image::DitCollectives collectives_;
  // Whether world_ is a formed generation (rank 0: written under mu_). A failed collective
  // sets broken_; the generation is then dropped by Receive (other ranks) or HealLoop (rank 0).
  std::atomic<bool> formed_{false};
  std::atomic<bool> broken_{false};
  absl::Status collective_error_;  // the last failure inside the DiT forward's collectives
  std::string last_join_error_;   // ranks > 0: logged once

  // Rank 0: requests wait for the group in arrival order (Send), each no longer than its
  // deadline; the holder of turn_ then takes mu_.
  FifoLock turn_;
  // Rank 0: the world communicator is shared by the request holding turn_ and the heal loop
  // (keepalive pings, re-forming). Timed: a request waits no longer than its deadline.
  std::timed_mutex mu_;
  // Whether a request holds mu_. Written only by the holder, while it holds mu_, and cleared
  // before it unlocks: a unique_lock shared between threads would clear its own flag after
  // the unlock, racing the next holder's assignment (which then found the group "not held"
  // and never released it).
  bool held_ = false;
  std::mutex stop_mu_;
  bool stopping_ = false;
  std::condition_variable stop_cv_;
  std::thread heal_;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_DENOISE_DENOISE_GROUP_H_
