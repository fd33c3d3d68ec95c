#include "models/parallel/comm_membership.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status/status_macros.h"
#include "models/parallel/rendezvous.h"
#if defined(DIFFMESH_HAVE_GLOO)
#include "models/parallel/gloo_comm.h"
#endif
#if defined(DIFFMESH_WITH_NCCL)
#include "models/parallel/nccl_comm.h"
#endif

namespace diffmesh::models::parallel {
namespace {

constexpr char kLatest[] = "latest";
constexpr char kAbort[] = "abort";

std::string HeartbeatKey(int rank) { return absl::StrCat("hb/", rank); }
std::string InviteKey(int64_t generation) { return absl::StrCat("invite/", generation); }

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string String(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

// A connection to the store (StoreOptionsFor); rank 0's first one serves it. No waiting for the
// other ranks: the heartbeats say who is there.
absl::StatusOr<c10::intrusive_ptr<c10d::Store>> Dial(const RendezvousOptions& options, bool serve) {
  absl::StatusOr<c10::intrusive_ptr<c10d::Store>> store =
      OpenKvStore(StoreOptionsFor(options, serve));
  if (!store.ok()) {
    return absl::UnavailableError(
        absl::StrCat("rank ", options.rank, ": ", store.status().message()));
  }
  return store;
}

absl::StatusOr<std::unique_ptr<Communicator>> ConnectGeneration(
    c10::intrusive_ptr<c10d::Store> store, const std::string& prefix,
    const RendezvousOptions& options, bool cuda) {
  if (cuda) {
#if defined(DIFFMESH_WITH_NCCL)
    ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm,
                     NcclCommunicator::CreateOnStore(std::move(store), prefix, options));
    return std::unique_ptr<Communicator>(std::move(comm));
#else
    return absl::UnimplementedError("this build has no CUDA/NCCL support (DIFFMESH_WITH_CUDA=OFF)");
#endif
  }
#if defined(DIFFMESH_HAVE_GLOO)
  return CreateGlooCommunicatorOnStore(std::move(store), prefix, options);
#else
  return absl::UnimplementedError("this build has no multi-rank CPU backend (Gloo)");
#endif
}

}  // namespace

struct Membership::Impl {
  // What rank 0 last read from another rank's heartbeat.
  struct Peer {
    std::string value;  // the raw heartbeat
    absl::Time changed = absl::InfinitePast();
    std::string incarnation;
    int64_t generation = -1;
    bool confirmed = false;  // reported the current generation since it was formed
  };

  MembershipOptions options;
  std::string incarnation;
  c10::intrusive_ptr<c10d::Store> store;  // the communicators' (rank 0: the server)
  c10::intrusive_ptr<c10d::Store> beat;   // heartbeats, invitations, aborts

  mutable absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  int64_t generation ABSL_GUARDED_BY(mu) = 0;       // formed and in it; 0: none
  int64_t joining ABSL_GUARDED_BY(mu) = 0;          // invited to, connecting
  int64_t last_generation ABSL_GUARDED_BY(mu) = 0;  // highest formed, invited or tried
  std::shared_ptr<WaitLimit> limit ABSL_GUARDED_BY(mu);
  std::vector<Peer> peers ABSL_GUARDED_BY(mu);      // rank 0, by rank
  std::vector<std::string> invited ABSL_GUARDED_BY(mu);
  absl::Status loss ABSL_GUARDED_BY(mu);
  int64_t counter = 0;  // heartbeat thread only
  std::thread thread;

  int rank() const { return options.rendezvous.rank; }
  static bool LossOrStop(Impl* m) ABSL_NO_THREAD_SAFETY_ANALYSIS { return !m->loss.ok() || m->stopping; }
  int world() const { return options.rendezvous.world_size; }

  // Waits `d` or until Stop(); true when stopping.
  bool Sleep(absl::Duration d) {
    absl::MutexLock lock(&mu);
    mu.AwaitWithTimeout(absl::Condition(&stopping), d);
    return stopping;
  }

  void HeartbeatLoop() {
    while (!Sleep(options.heartbeat_interval)) {
      if (rank() == 0) {
        Watch();
      } else if (absl::Status s = Beat(); !s.ok()) {
        // Rank 0 closes its store right after telling the ranks to stop: give this rank's
        // owner the time to take that command and stop this thread first.
        if (Sleep(options.heartbeat_timeout)) return;
        if (options.on_main_lost) {
          options.on_main_lost(s);
        } else {
          std::fprintf(stderr, "rank %d: %s; exiting\n", rank(), std::string(s.message()).c_str());
          std::fflush(stderr);
          std::_Exit(3);
        }
        return;
      }
    }
  }

  // Ranks > 0: one heartbeat; ends this rank's generation when rank 0 aborted it.
  absl::Status Beat() {
    int64_t reported, current;
    {
      absl::MutexLock lock(&mu);
      current = generation;
      reported = generation > 0 ? generation : joining;
    }
    try {
      beat->set(HeartbeatKey(rank()), Bytes(absl::StrCat(incarnation, " ", ++counter, " ", reported)));
      int64_t aborted = 0;
      if (current > 0 && beat->check({kAbort}) &&
          absl::SimpleAtoi(String(beat->get(kAbort)), &aborted) && aborted >= current) {
        Abort(current, absl::UnavailableError(
                           absl::StrCat("rank 0 ended generation ", current, " of the group")));
      }
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("rank 0's store is gone: ", e.what()));
    }
    return absl::OkStatus();
  }

  void Abort(int64_t which, const absl::Status& why) {
    absl::MutexLock lock(&mu);
    if (generation != which || limit == nullptr) return;
    limit->Abort(why);
  }

  // Rank 0: reads every heartbeat; ends a formed generation that lost a rank.
  void Watch() {
    const absl::Time now = absl::Now();
    std::vector<std::pair<int, std::string>> values;
    for (int r = 1; r < world(); ++r) {
      try {
        if (beat->check({HeartbeatKey(r)})) values.emplace_back(r, String(beat->get(HeartbeatKey(r))));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank 0: reading rank %d's heartbeat: %s\n", r, e.what());
      }
    }
    int64_t ended = 0;
    {
      absl::MutexLock lock(&mu);
      for (const auto& [r, value] : values) {
        Peer& p = peers[r];
        if (value == p.value) continue;
        p.value = value;
        p.changed = now;
        std::vector<std::string> parts = absl::StrSplit(value, ' ');
        if (parts.size() == 3) {
          p.incarnation = parts[0];
          if (!absl::SimpleAtoi(parts[2], &p.generation)) p.generation = -1;
        }
        if (generation > 0 && p.generation == generation) p.confirmed = true;
      }
      if (generation == 0 || !loss.ok()) return;
      std::vector<std::string> lost;
      for (int r = 1; r < world(); ++r) {
        const Peer& p = peers[r];
        if (now - p.changed > options.heartbeat_timeout) {
          lost.push_back(absl::StrCat("rank ", r, " (no heartbeat for ",
                                      absl::FormatDuration(absl::Trunc(now - p.changed, absl::Milliseconds(100))), ")"));
        } else if (p.incarnation != invited[r]) {
          lost.push_back(absl::StrCat("rank ", r, " (restarted)"));
        } else if (p.confirmed && p.generation != generation) {
          lost.push_back(absl::StrCat("rank ", r, " (left the group)"));
        }
      }
      if (lost.empty()) return;
      loss = absl::UnavailableError(absl::StrCat("denoise group lost ", absl::StrJoin(lost, ", "),
                                                 " in generation ", generation));
      limit->Abort(loss);
      ended = generation;
      generation = 0;
    }
    Publish(ended);
  }

  // Rank 0: tells the other ranks that `which` ended.
  void Publish(int64_t which) {
    try {
      beat->set(kAbort, Bytes(std::to_string(which)));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank 0: publishing the end of generation %lld: %s\n",
                   static_cast<long long>(which), e.what());
    }
  }
};

Membership::Membership(const MembershipOptions& options, std::unique_ptr<Impl> impl)
    : options_(options), impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<Membership>> Membership::Start(const MembershipOptions& options) {
  RETURN_IF_ERROR(CheckRendezvous(options.rendezvous));
  RETURN_IF_ERROR(CheckHeartbeat(options.heartbeat_interval, options.heartbeat_timeout));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->incarnation = absl::StrCat(getpid(), "-", absl::ToUnixNanos(absl::Now()));
  ASSIGN_OR_RETURN(impl->store, Dial(options.rendezvous, /*serve=*/options.rendezvous.rank == 0));
  ASSIGN_OR_RETURN(impl->beat, Dial(options.rendezvous, /*serve=*/false));
  impl->peers.resize(options.rendezvous.world_size);
  if (options.rendezvous.rank == 0) {
    // A rank 0 that restarted serves a fresh store: generations start again at 1 everywhere.
    try {
      impl->beat->set(kAbort, Bytes("0"));
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("rendezvous store: ", e.what()));
    }
  }
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->HeartbeatLoop(); });
  return std::unique_ptr<Membership>(new Membership(options, std::move(impl)));
}

Membership::~Membership() {
  Stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

void Membership::Stop() {
  absl::MutexLock lock(&impl_->mu);
  impl_->stopping = true;
}

absl::Status Membership::WaitUntilReady(absl::Time until) {
  if (rank() != 0) return absl::FailedPreconditionError("WaitUntilReady is rank 0's");
  Impl& m = *impl_;
  while (true) {
    std::vector<int> missing;
    {
      absl::MutexLock lock(&m.mu);
      if (m.stopping) return absl::CancelledError("membership stopped");
      const absl::Time now = absl::Now();
      for (int r = 1; r < world_size(); ++r) {
        const Impl::Peer& p = m.peers[r];
        if (now - p.changed > m.options.heartbeat_timeout || p.generation != 0) missing.push_back(r);
      }
    }
    if (missing.empty()) return absl::OkStatus();
    if (absl::Now() >= until) {
      return absl::DeadlineExceededError(absl::StrCat(
          "denoise group: waiting for rank(s) ", absl::StrJoin(missing, ", "), " to join"));
    }
    if (m.Sleep(options_.heartbeat_interval)) return absl::CancelledError("membership stopped");
  }
}

absl::StatusOr<std::unique_ptr<Communicator>> Membership::FormGeneration(absl::Time until) {
  Impl& m = *impl_;
  int64_t g = 0;
  if (rank() == 0) {
    std::vector<std::string> invited(world_size());
    {
      absl::MutexLock lock(&m.mu);
      g = ++m.last_generation;
      invited[0] = m.incarnation;
      for (int r = 1; r < world_size(); ++r) invited[r] = m.peers[r].incarnation;
      m.invited = invited;
      m.joining = g;
    }
    try {
      m.beat->set(InviteKey(g), Bytes(absl::StrJoin(invited, ",")));
      m.beat->set(kLatest, Bytes(std::to_string(g)));
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("rendezvous store: ", e.what()));
    }
  } else {
    while (g == 0) {
      try {
        int64_t latest = 0;
        int64_t last;
        {
          absl::MutexLock lock(&m.mu);
          last = m.last_generation;
        }
        if (m.beat->check({kLatest}) && absl::SimpleAtoi(String(m.beat->get(kLatest)), &latest) &&
            latest != last && m.beat->check({InviteKey(latest)})) {
          std::vector<std::string> invited = absl::StrSplit(String(m.beat->get(InviteKey(latest))), ',');
          if (static_cast<int>(invited.size()) == world_size() && invited[rank()] == m.incarnation) {
            g = latest;
          }
        }
      } catch (const std::exception& e) {
        return absl::UnavailableError(absl::StrCat("rank 0's store is gone: ", e.what()));
      }
      if (g != 0) break;
      if (absl::Now() >= until) {
        return absl::DeadlineExceededError("denoise group: no invitation from rank 0 in time");
      }
      if (m.Sleep(options_.heartbeat_interval)) return absl::CancelledError("membership stopped");
    }
    absl::MutexLock lock(&m.mu);
    m.last_generation = g;
    m.joining = g;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      ConnectGeneration(m.store, absl::StrCat("g", g, "/"), options_.rendezvous, options_.cuda);
  absl::MutexLock lock(&m.mu);
  m.joining = 0;
  if (!comm.ok()) {
    if (rank() == 0) m.Publish(g);
    return comm.status();
  }
  m.limit = std::make_shared<WaitLimit>();
  (*comm)->set_wait_limit(m.limit);
  m.generation = g;
  m.loss = absl::OkStatus();
  for (Impl::Peer& p : m.peers) p.confirmed = false;
  return comm;
}

void Membership::EndGeneration(const absl::Status& why) {
  Impl& m = *impl_;
  int64_t ended;
  {
    absl::MutexLock lock(&m.mu);
    if (m.generation == 0) return;
    ended = m.generation;
    m.limit->Abort(why);
    if (rank() == 0 && m.loss.ok()) m.loss = why;
    m.generation = 0;
  }
  if (rank() == 0) m.Publish(ended);
}

absl::Status Membership::Loss() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->loss;
}

absl::Status Membership::WaitForLoss(absl::Duration wait) const {
  const absl::Time until = absl::Now() + wait;
  absl::MutexLock lock(&impl_->mu);
  impl_->mu.AwaitWithDeadline(absl::Condition(&Impl::LossOrStop, impl_.get()), until);
  return impl_->loss;
}

int64_t Membership::generation() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->generation;
}

}  // namespace diffmesh::models::parallel
