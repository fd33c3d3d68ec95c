#include "services/denoise/denoise_group.h"

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/parallel/joint_attention.h"
#if defined(DIFFMESH_HAVE_GLOO)
#include "models/parallel/gloo_comm.h"
#endif
#if defined(DIFFMESH_WITH_NCCL)
#include "models/parallel/nccl_comm.h"
#endif

namespace diffmesh {

using models::parallel::Communicator;

namespace {

// Throws with the status message: the DiT forward has no Status path (as ATen ops throw).
void ThrowIfError(const absl::Status& s) {
  TORCH_CHECK(s.ok(), std::string(s.message()));
}

}  // namespace

DenoiseGroup::DenoiseGroup(const DenoiseGroupOptions& options, models::parallel::RankLayout layout)
    : options_(options), layout_(std::move(layout)) {}

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
    if (world == 1) {
      group->world_ = models::parallel::CreateSingleRankCommunicator(at::Device(at::kCUDA, 0));
    } else {
      ASSIGN_OR_RETURN(group->world_, models::parallel::CreateNcclCommunicator(options.rendezvous));
    }
#else
    return absl::UnimplementedError("this build has no CUDA/NCCL support (DIFFMESH_WITH_CUDA=OFF)");
#endif
  } else if (world == 1) {
    group->world_ = models::parallel::CreateSingleRankCommunicator();
  } else {
#if defined(DIFFMESH_HAVE_GLOO)
    ASSIGN_OR_RETURN(group->world_, models::parallel::CreateGlooCommunicator(options.rendezvous));
#else
    return absl::UnimplementedError("this build has no multi-rank CPU backend (Gloo)");
#endif
  }
  ASSIGN_OR_RETURN(group->groups_, models::parallel::CreateParallelGroups(*group->world_, group->layout_));

  DenoiseGroup* g = group.get();
  auto& c = group->collectives_;
  if (options.parallel.tp > 1) {
    c.tp_all_reduce = [g](at::Tensor& t) { ThrowIfError(g->groups_.tp->AllReduce(t)); };
  }
  if (options.parallel.sp() > 1) {
    c.sp_rank = g->layout_.sp_rank();
    c.sp_size = options.parallel.sp();
    c.sp_all_gather = [g](const at::Tensor& shard) {
      // [B, n, X] → gathered along dim 0 as [sp·n, B, X] → [B, sp·n, X].
      auto out = g->groups_.sp->AllGather(shard.transpose(0, 1));
      ThrowIfError(out.status());
      return out->transpose(0, 1);
    };
    models::parallel::JointAttentionGroups attention_groups;
    if (options.parallel.ulysses > 1) attention_groups.ulysses = g->groups_.ulysses.get();
    if (options.parallel.ring > 1) attention_groups.ring = g->groups_.ring.get();
    c.attention = [attention_groups](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const models::glm_image::JointAttentionShape& shape) {
      auto out = models::parallel::JointSequenceParallelAttention(attention_groups, q, k, v,
                                                                  shape.text_len, shape.image_len);
      ThrowIfError(out.status());
      return *out;
    };
  }
  if (group->is_main() && world > 1) {
    group->keepalive_ = std::thread([g] { g->KeepaliveLoop(); });
  }
  return group;
}

DenoiseGroup::~DenoiseGroup() {
  if (!is_main() || world_size() == 1) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (keepalive_.joinable()) keepalive_.join();
  if (Send(Command::kStop, "").ok()) Release();
}

void DenoiseGroup::KeepaliveLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.keepalive),
                            [this] { return stopping_; })) {
    std::string ping(1, static_cast<char>(Command::kPing));
    if (!world_->BroadcastBytes(&ping, 0).ok()) return;  // the next request reports it
  }
}

absl::Status DenoiseGroup::Send(Command command, const std::string& payload) {
  mu_.lock();
  held_ = true;
  return SendMore(command, payload);
}

absl::Status DenoiseGroup::SendMore(Command command, const std::string& payload) {
  if (!held_) return absl::FailedPreconditionError("denoise group: not held");
  if (world_size() == 1) return absl::OkStatus();
  std::string message = std::string(1, static_cast<char>(command)) + payload;
  absl::Status s = world_->BroadcastBytes(&message, 0);
  if (!s.ok()) {
    Release();
    return absl::UnavailableError(absl::StrCat("denoise group: cannot reach the other ranks: ", s.message()));
  }
  return absl::OkStatus();
}

void DenoiseGroup::Release() {
  if (!held_) return;
  held_ = false;
  mu_.unlock();
}

absl::StatusOr<std::pair<DenoiseGroup::Command, std::string>> DenoiseGroup::Receive() {
  while (true) {
    std::string message;
    RETURN_IF_ERROR(world_->BroadcastBytes(&message, 0));
    if (message.empty()) return absl::DataLossError("denoise group: empty command");
    const auto command = static_cast<Command>(message[0]);
    if (command == Command::kPing) continue;
    return std::make_pair(command, message.substr(1));
  }
}

absl::StatusOr<bool> DenoiseGroup::AgreeToContinue(bool main_decision) {
  if (world_size() == 1) return main_decision;
  at::Tensor flag = at::full({1}, main_decision ? 1 : 0, at::TensorOptions().dtype(at::kInt).device(device()));
  RETURN_IF_ERROR(world_->Broadcast(flag, 0));
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
  try {
    for (int b : assignment[layout_.cfg_rank()]) mine.push_back(forward(branches[b]));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("denoise forward failed: ", e.what_without_backtrace()));
  }
  if (cfg == 1) return mine;
  // Every cfg rank sends the same number of slots (zeros where it has fewer branches), so
  // idle ranks take part without a forward pass and nothing is summed by mistake.
  at::Tensor packed = PackRankPredictions(mine, like, n, cfg);
  ASSIGN_OR_RETURN(at::Tensor gathered, groups_.cfg->AllGather(packed));
  return BranchOrderFromGathered(gathered, n, cfg);
}

}  // namespace diffmesh
