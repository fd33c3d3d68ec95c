// Who is in a group of ranks, over time: a world communicator that outlives a lost rank.
//
// Rank 0 serves the rendezvous store (as for CreateGlooCommunicator); every rank keeps a second,
// small connection to it on which a heartbeat thread writes "hb/<rank>" (its incarnation, a
// counter and the generation it is in) every heartbeat_interval. The communicator is formed in
// generations: rank 0 waits until every other rank beats and is waiting, invites those
// incarnations to generation G ("invite/<G>", then "latest" = G) and connects over the store
// prefix "g<G>/"; an invited rank connects under the same prefix. Rank 0's heartbeat thread
// watches the others: a rank whose counter stops for heartbeat_timeout (killed, stopped,
// partitioned), that restarted (new incarnation) or that left (its generation changed) ends the
// generation: rank 0 aborts the generation's WaitLimit (its own blocked collectives return
// UNAVAILABLE naming the rank) and publishes "abort" = G, on which the other ranks' heartbeat
// threads abort theirs. The owner then drops the communicator and forms the next generation.
//
// A rank that loses the store (rank 0 is gone) calls on_main_lost from its heartbeat thread.
// No gRPC and no ATen here beyond the communicator types.
#ifndef DIFFMESH_MODELS_PARALLEL_COMM_MEMBERSHIP_H_
#define DIFFMESH_MODELS_PARALLEL_COMM_MEMBERSHIP_H_

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "models/parallel/comm.h"

namespace diffmesh::models::parallel {

struct MembershipOptions {
  RendezvousOptions rendezvous;
  // NCCL communicators (CUDA) instead of Gloo (CPU).
  bool cuda = false;
  // How often every rank beats (and rank 0 reads the others' beats). Must be > 0.
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  // A rank whose heartbeat has not advanced for this long is lost. Must exceed twice the
  // interval: one late beat (a loaded host, a slow store round trip) is not a loss.
  absl::Duration heartbeat_timeout = absl::Seconds(4);
  // Ranks > 0, from the heartbeat thread, when the store (rank 0) cannot be reached. Default:
  // a line on stderr and _Exit(3) (the rank's supervisor restarts it; a blocked collective
  // cannot be unwound from another thread).
  std::function<void(const absl::Status&)> on_main_lost;
};

// OK when `interval` and `timeout` make a usable heartbeat (interval > 0, timeout > 2 ×
// interval); INVALID_ARGUMENT naming the flag-facing names otherwise. Header-only: the
// denoise binary checks its flags with it in builds without a multi-rank backend too.
inline absl::Status CheckHeartbeat(absl::Duration interval, absl::Duration timeout) {
  if (interval <= absl::ZeroDuration() || interval == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "heartbeat interval ", absl::FormatDuration(interval), " must be positive and finite"));
  }
  if (timeout <= 2 * interval || timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("heartbeat timeout ", absl::FormatDuration(timeout),
                     " must be finite and more than twice the heartbeat interval ",
                     absl::FormatDuration(interval), " (one late beat is not a lost rank)"));
  }
  return absl::OkStatus();
}

class Membership {
 public:
  // Connects to the store (rank 0 serves it) and starts heartbeating. Returns without waiting
  // for the other ranks (FormGeneration does).
  static absl::StatusOr<std::unique_ptr<Membership>> Start(const MembershipOptions& options);
  // Stops the heartbeat thread; the store closes with rank 0's object.
  ~Membership();

  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  int rank() const { return options_.rendezvous.rank; }
  int world_size() const { return options_.rendezvous.world_size; }

  // Rank 0: blocks until every other rank beats and waits for an invitation (OK), or `until`
  // passes (DEADLINE_EXCEEDED, naming the ranks still missing), or Stop() (CANCELLED).
  absl::Status WaitUntilReady(absl::Time until);

  // Collective: forms the next generation and returns its world communicator, whose WaitLimit
  // this object aborts when the generation is lost. Rank 0 invites the ranks (call
  // WaitUntilReady first); the others block until invited (until `until`: DEADLINE_EXCEEDED).
  absl::StatusOr<std::unique_ptr<Communicator>> FormGeneration(absl::Time until);

  // Ends the current generation (idempotent): aborts its WaitLimit with `why`; rank 0 also
  // publishes the abort to the others, a rank > 0 reports that it left.
  void EndGeneration(const absl::Status& why);

  // Rank 0: UNAVAILABLE naming the lost ranks while the current generation is lost; OK while it
  // is whole (or none is formed yet).
  absl::Status Loss() const;
  // Rank 0, after a collective failed: waits up to `wait` for the heartbeats to name the lost
  // rank; then Loss() (OK if none was found).
  absl::Status WaitForLoss(absl::Duration wait) const;

  // The generation this rank is in (0: none).
  int64_t generation() const;
  // Makes WaitUntilReady / FormGeneration return CANCELLED.
  void Stop();

 private:
  struct Impl;
  Membership(const MembershipOptions& options, std::unique_ptr<Impl> impl);
  const MembershipOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_COMM_MEMBERSHIP_H_
