#include "services/denoise/denoise_group.h"

#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/parallel/joint_attention.h"

namespace diffmesh {

using models::parallel::Communicator;

namespace {

// A collective wait may run this long past the request's deadline: a healthy group then ends
// its step and stops at the next AgreeToContinue instead of ending its generation.
constexpr absl::Duration kDeadlineGrace = absl::Seconds(1);

std::mutex health_mu;
std::function<void(bool, const std::string&)>* health_listener = nullptr;

void ReportHealth(bool serving, const std::string& why) {
  std::lock_guard<std::mutex> lock(health_mu);
  if (health_listener != nullptr) (*health_listener)(serving, why);
}

}  // namespace

void SetDenoiseGroupHealthListener(std::function<void(bool serving, const std::string& why)> listener) {
  std::lock_guard<std::mutex> lock(health_mu);
  delete health_listener;
  health_listener = listener ? new std::function<void(bool, const std::string&)>(std::move(listener)) : nullptr;
}

DenoiseGroup::DenoiseGroup(const DenoiseGroupOptions& options, models::parallel::RankLayout layout)
    : options_(options), layout_(std::move(layout)) {}

void DenoiseGroup::ThrowIfError(const absl::Status& s) {
  if (!s.ok()) collective_error_ = s;
  TORCH_CHECK(s.ok(), std::string(s.message()));
}

absl::StatusOr<std::unique_ptr<DenoiseGroup>> DenoiseGroup::Create(const DenoiseGroupOptions& options) {
  const int world = options.parallel.world();
  if (options.rendezvous.world_size != world) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world size ", options.rendezvous.world_size, " != tp ", options.parallel.tp, " × ulysses ",
        options.parallel.ulysses, " × ring ", options.parallel.ring, " × cfg ", options.parallel.cfg,
        " = ", world));
  }
  ASSIGN_OR_RETURN(auto layout, models::parallel::RankLayout::Create(
                                    options.parallel, world, options.rendezvous.rank, options.num_heads));
  auto group = std::unique_ptr<DenoiseGroup>(new DenoiseGroup(options, std::move(layout)));
  if (options.cuda) {
    if (!at::hasCUDA()) return absl::FailedPreconditionError("--device cuda: no CUDA device here");
#if defined(DIFFMESH_WITH_NCCL)
    group->device_ = at::Device(at::kCUDA, 0);  // a group of more ranks: its communicator's
#else
    return absl::UnimplementedError("this build has no CUDA/NCCL support (DIFFMESH_WITH_CUDA=OFF)");
#endif
  }
  if (world == 1) {
    group->world_ = models::parallel::CreateSingleRankCommunicator(group->device_);
    ASSIGN_OR_RETURN(group->groups_, models::parallel::CreateParallelGroups(*group->world_, group->layout_));
    group->formed_ = true;
  } else {
#if !defined(DIFFMESH_HAVE_GLOO) && !defined(DIFFMESH_WITH_NCCL)
    return absl::UnimplementedError("this build has no multi-rank CPU backend (Gloo)");
#else
    models::parallel::MembershipOptions m;
    m.rendezvous = options.rendezvous;
    m.cuda = options.cuda;
    m.heartbeat_interval = options.heartbeat_interval;
    m.heartbeat_timeout = options.heartbeat_timeout;
    ASSIGN_OR_RETURN(group->membership_, models::parallel::Membership::Start(m));
    const absl::Time until = absl::Now() + absl::FromChrono(options.rendezvous.timeout);
    if (group->is_main()) RETURN_IF_ERROR(group->membership_->WaitUntilReady(until));
    RETURN_IF_ERROR(group->Form(until));
    // Every generation's communicator lives on the same device (cuda:<rank % GPUs> or the CPU).
    group->device_ = group->world_->device();
#endif
  }

  DenoiseGroup* g = group.get();
  auto& c = group->collectives_;
  if (options.parallel.tp > 1) {
    c.tp_all_reduce = [g](at::Tensor& t) { g->ThrowIfError(g->groups_.tp->AllReduce(t)); };
  }
  if (options.parallel.sp() > 1) {
    c.sp_rank = g->layout_.sp_rank();
    c.sp_size = options.parallel.sp();
    c.sp_all_gather = [g](const at::Tensor& shard) {
      // [B, n, X] → gathered along dim 0 as [sp·n, B, X] → [B, sp·n, X].
      auto out = g->groups_.sp->AllGather(shard.transpose(0, 1));
      g->ThrowIfError(out.status());
      return out->transpose(0, 1);
    };
    // The groups are looked up per call: a re-formed group has new communicators.
    c.attention = [g](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const models::glm_image::JointAttentionShape& shape) {
      models::parallel::JointAttentionGroups attention_groups;
      if (g->options_.parallel.ulysses > 1) attention_groups.ulysses = g->groups_.ulysses.get();
      if (g->options_.parallel.ring > 1) attention_groups.ring = g->groups_.ring.get();
      auto out = models::parallel::JointSequenceParallelAttention(attention_groups, q, k, v,
                                                                  shape.text_len, shape.image_len);
      g->ThrowIfError(out.status());
      return *out;
    };
  }
  ReportHealth(true, "");
  if (group->is_main() && world > 1) {
    group->heal_ = std::thread([g] { g->HealLoop(); });
  }
  return group;
}

DenoiseGroup::~DenoiseGroup() {
  if (world_size() == 1) return;
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  membership_->Stop();
  if (heal_.joinable()) heal_.join();
  if (is_main()) {
    CallContext stop(absl::Now() + absl::Seconds(5));
    if (Send(Command::kStop, "", stop).ok()) Release();
  }
  if (broken_) {
    Drop();  // an operation may still wait in it
  } else {
    groups_ = {};
    world_.reset();
  }
}

absl::Status DenoiseGroup::Form(absl::Time until) {
  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> world, membership_->FormGeneration(until));
  auto groups = models::parallel::CreateParallelGroups(*world, layout_);
  world_ = std::move(world);
  if (!groups.ok()) {
    membership_->EndGeneration(groups.status());
    Drop();
    return groups.status();
  }
  groups_ = *std::move(groups);
  collective_error_ = absl::OkStatus();
  broken_ = false;
  formed_ = true;
  return absl::OkStatus();
}

void DenoiseGroup::Drop() {
  formed_ = false;
  if (world_ == nullptr) return;
  std::thread([world = std::move(world_), groups = std::move(groups_)]() mutable {
    groups = {};
    world.reset();
  }).detach();
  world_ = nullptr;
  groups_ = {};
}

absl::Status DenoiseGroup::Failed(const absl::Status& s) {
  if (world_size() == 1) return s;
  if (!is_main()) {
    broken_ = true;
    membership_->EndGeneration(s);
    return s;
  }
  // A killed rank fails the collective at once (its connections reset); which rank it was
  // shows in the heartbeats within heartbeat_timeout.
  bool stopping;
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping = stopping_;
  }
  absl::Status loss = membership_->Loss();
  if (loss.ok() && !absl::IsDeadlineExceeded(s) && !stopping) {
    loss = membership_->WaitForLoss(options_.heartbeat_timeout + 4 * options_.heartbeat_interval);
  }
  // Set after the wait, so that HealLoop reports the lost rank rather than the bare failure.
  broken_ = true;
  membership_->EndGeneration(loss.ok() ? s : loss);
  // At once, not on HealLoop's next round: whoever saw this request fail may ask next.
  ReportHealth(false, std::string(loss.ok() ? s.message() : loss.message()));
  if (!loss.ok()) return loss;
  if (absl::IsDeadlineExceeded(s)) return s;
  return absl::UnavailableError(absl::StrCat("denoise group: ", s.message()));
}

bool DenoiseGroup::WaitStop(absl::Duration d) {
  std::unique_lock<std::mutex> lock(stop_mu_);
  return stop_cv_.wait_for(lock, absl::ToChronoMilliseconds(d), [this] { return stopping_; });
}

void DenoiseGroup::HealLoop() {
  absl::Time last_ping = absl::Now();
  absl::Time last_log = absl::InfinitePast();
  while (!WaitStop(options_.heartbeat_interval)) {
    absl::Status loss = membership_->Loss();
    if (formed_ && loss.ok() && !broken_) {
      if (absl::Now() - last_ping < options_.keepalive) continue;
      if (!mu_.try_lock()) continue;  // a request holds the group: its commands keep the ranks awake
      std::string ping(1, static_cast<char>(Command::kPing));
      if (absl::Status s = world_->BroadcastBytes(&ping, 0); !s.ok()) {
        broken_ = true;
        membership_->EndGeneration(s);
      }
      mu_.unlock();
      last_ping = absl::Now();
      continue;
    }
    if (formed_) {
      // Lost: the request holding the group (if any) returns once its waits are aborted.
      if (loss.ok()) loss = absl::UnavailableError("denoise group: a collective failed");
      ReportHealth(false, std::string(loss.message()));
      std::cerr << "denoise group: " << loss.message() << "; re-forming once every rank is back" << std::endl;
      std::lock_guard<std::timed_mutex> lock(mu_);
      membership_->EndGeneration(loss);
      Drop();
    }
    absl::Status ready = membership_->WaitUntilReady(absl::Now() + options_.heartbeat_interval);
    if (!ready.ok()) {
      if (absl::IsCancelled(ready)) return;
      if (absl::Now() - last_log > absl::Seconds(30)) {
        std::cerr << ready.message() << std::endl;
        last_log = absl::Now();
      }
      continue;
    }
    std::lock_guard<std::timed_mutex> lock(mu_);
    absl::Status formed = Form(absl::Now() + absl::FromChrono(options_.rendezvous.timeout));
    if (formed.ok()) {
      std::cerr << "denoise group: re-formed (generation " << membership_->generation() << ")" << std::endl;
      ReportHealth(true, "");
      last_ping = absl::Now();
    } else {
      std::cerr << "denoise group: re-forming failed: " << formed.message() << std::endl;
    }
  }
}

absl::Status DenoiseGroup::Send(Command command, const std::string& payload,
                                const CallContext& ctx) {
  const absl::Time deadline = ctx.deadline();
  const absl::Status cancelled = absl::CancelledError(
      "denoise: the request was cancelled while it waited for the denoise group");
  const absl::Status expired = absl::DeadlineExceededError(
      "denoise: the deadline passed while the request waited for the denoise group (busy with "
      "other requests; it runs one at a time)");
  // Requests take turns in arrival order; a cancelled one leaves the line at once.
  switch (turn_.Acquire(deadline, [&ctx] { return ctx.cancelled(); }, kGroupWaitSlice)) {
    case FifoLock::Outcome::kCancelled: return cancelled;
    case FifoLock::Outcome::kDeadlineExceeded: return expired;
    case FifoLock::Outcome::kAcquired: break;
  }
  // Only the heal loop competes for mu_ now (a ping, or re-forming the group).
  while (!mu_.try_lock_for(absl::ToChronoMilliseconds(
      std::min(kGroupWaitSlice, std::max(absl::ZeroDuration(), deadline - absl::Now()))))) {
    if (ctx.cancelled() || absl::Now() >= deadline) {
      turn_.Release();
      return ctx.cancelled() ? cancelled : expired;
    }
  }
  held_ = true;
  absl::Status loss = world_size() > 1 ? membership_->Loss() : absl::OkStatus();
  if (!formed_ || broken_ || !loss.ok()) {
    held_ = false;
    mu_.unlock();
    turn_.Release();
    if (loss.ok()) return absl::UnavailableError("denoise group: waiting for every rank to join");
    return absl::UnavailableError(absl::StrCat("denoise group is re-forming: ", loss.message()));
  }
  if (world_->wait_limit() != nullptr && deadline != absl::InfiniteFuture()) {
    world_->wait_limit()->SetDeadline(deadline + kDeadlineGrace);
  }
  return SendMore(command, payload);
}

absl::Status DenoiseGroup::SendMore(Command command, const std::string& payload) {
  if (!held_) return absl::FailedPreconditionError("denoise group: not held");
  if (world_size() == 1) return absl::OkStatus();
  if (!formed_) return absl::UnavailableError("denoise group: the group ended during the request");
  std::string message = std::string(1, static_cast<char>(command)) + payload;
  absl::Status s = world_->BroadcastBytes(&message, 0);
  if (!s.ok()) {
    absl::Status reported = Failed(s);
    Release();
    return reported;
  }
  return absl::OkStatus();
}

void DenoiseGroup::Release() {
  if (!held_) return;
  if (world_ != nullptr && world_->wait_limit() != nullptr) {
    world_->wait_limit()->SetDeadline(absl::InfiniteFuture());
  }
  held_ = false;
  mu_.unlock();
  turn_.Release();
}

absl::StatusOr<std::pair<DenoiseGroup::Command, std::string>> DenoiseGroup::Receive() {
  while (true) {
    if (broken_ || !formed_) {
      if (world_ != nullptr) {
        membership_->EndGeneration(collective_error_.ok() ? absl::AbortedError("left") : collective_error_);
        Drop();
        ReportHealth(false, "waiting for rank 0 to re-form the group");
      }
      absl::Status s = Form(absl::InfiniteFuture());
      if (!s.ok()) {
        if (absl::IsCancelled(s)) return s;
        if (s.message() != last_join_error_) {
          std::cerr << "rank " << layout_.rank() << ": joining the group: " << s.message() << std::endl;
          last_join_error_ = std::string(s.message());
        }
        // Rank 0 gone: the heartbeat thread ends this process shortly; else try the next one.
        absl::SleepFor(options_.heartbeat_interval);
        continue;
      }
      ReportHealth(true, "");
    }
    std::string message;
    if (absl::Status s = world_->BroadcastBytes(&message, 0); !s.ok()) {
      Failed(s).IgnoreError();
      continue;
    }
    if (message.empty()) return absl::DataLossError("denoise group: empty command");
    const auto command = static_cast<Command>(message[0]);
    if (command == Command::kPing) continue;
    return std::make_pair(command, message.substr(1));
  }
}

absl::StatusOr<bool> DenoiseGroup::AgreeToContinue(bool main_decision) {
  if (world_size() == 1) return main_decision;
  if (!formed_ || broken_) return absl::UnavailableError("denoise group: the group ended during the request");
  at::Tensor flag = at::full({1}, main_decision ? 1 : 0, at::TensorOptions().dtype(at::kInt).device(device()));
  if (absl::Status s = world_->Broadcast(flag, 0); !s.ok()) return Failed(s);
  return flag.item<int>() != 0;
}

absl::Status DenoiseGroup::CfgAllReduce(at::Tensor& tensor) {
  if (options_.parallel.cfg == 1) return absl::OkStatus();
  return groups_.cfg->AllReduce(tensor, models::parallel::ReduceOp::kSum);
}

absl::StatusOr<std::vector<at::Tensor>> DenoiseGroup::RunBranches(
    const CfgPolicy& policy, const std::function<at::Tensor(const CfgBranch&)>& forward,
    const at::Tensor& like) {
  const auto& branches = policy.branches();
  const int n = static_cast<int>(branches.size());
  const int cfg = options_.parallel.cfg;
  std::vector<at::Tensor> mine;
  const std::vector<std::vector<int>> assignment = AssignBranches(n, cfg);
  if (world_size() > 1 && (!formed_ || broken_)) {
    return absl::UnavailableError("denoise group: the group ended during the request");
  }
  try {
    for (int b : assignment[layout_.cfg_rank()]) mine.push_back(forward(branches[b]));
  } catch (const c10::Error& e) {
    if (!collective_error_.ok()) return Failed(collective_error_);
    return absl::InternalError(absl::StrCat("denoise forward failed: ", e.what_without_backtrace()));
  }
  if (cfg == 1) return mine;
  // Every cfg rank sends the same number of slots (zeros where it has fewer branches), so
  // idle ranks take part without a forward pass and nothing is summed by mistake.
  at::Tensor packed = PackRankPredictions(mine, like, n, cfg);
  absl::StatusOr<at::Tensor> gathered = groups_.cfg->AllGather(packed);
  if (!gathered.ok()) return Failed(gathered.status());
  return BranchOrderFromGathered(*gathered, n, cfg);
}

}  // namespace diffmesh
