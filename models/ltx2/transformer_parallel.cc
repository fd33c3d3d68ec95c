#include "models/ltx2/transformer_parallel.h"

#include <optional>
#include <utility>
#include <vector>

#include "models/core/ops.h"
#include "models/parallel/joint_attention.h"
#include "models/parallel/ulysses.h"

namespace diffmesh::models::ltx2 {

TpSlice SliceOf(const parallel::Communicator* tp) {
  return tp == nullptr ? TpSlice{} : TpSlice{tp->rank(), tp->size()};
}

at::Tensor SliceForRank(const at::Tensor& t, int64_t dim, TpSlice slice) {
  if (!t.defined() || slice.size == 1) return t;
  const int64_t part = t.size(dim) / slice.size;
  TORCH_CHECK(part * slice.size == t.size(dim), "tensor-parallel slice: dim ", dim, " of size ",
              t.size(dim), " does not divide by ", slice.size);
  return t.narrow(dim, slice.rank * part, part).clone(at::MemoryFormat::Contiguous);
}

RopeTables SliceRope(const RopeTables& tables, RopeType type, TpSlice slice) {
  if (slice.size == 1) return tables;
  // Split: [B, H, T, r] bands per head; interleaved: [B, T, C] channels.
  const int64_t dim = type == RopeType::kSplit ? 1 : 2;
  const int64_t part = tables.cos.size(dim) / slice.size;
  return {tables.cos.narrow(dim, slice.rank * part, part),
          tables.sin.narrow(dim, slice.rank * part, part)};
}

void TpAllReduce(parallel::Communicator* tp, at::Tensor& t) {
  if (GroupSize(tp) == 1) return;
  absl::Status status = tp->AllReduce(t);
  TORCH_CHECK(status.ok(), "ltx2 tensor-parallel all-reduce: ", status.ToString());
}

at::Tensor FrameShardedSelfAttention(parallel::Communicator& ulysses, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& mask, int64_t offset) {
  const int64_t u = ulysses.size();
  std::optional<at::Tensor> m;
  if (mask.defined()) m = mask.to(q.scalar_type());
  if (q.size(1) % u == 0) {
    parallel::UlyssesOptions options;
    // After the all-to-all every rank holds the whole sequence: the whole mask applies.
    options.inner = [&m](const at::Tensor& qf, const at::Tensor& kf, const at::Tensor& vf) {
      return models::Attention(qf, kf, vf, m);
    };
    absl::StatusOr<at::Tensor> out = parallel::UlyssesAttention(ulysses, q, k, v, options);
    TORCH_CHECK(out.ok(), "ltx2 video self-attention: ", out.status().ToString());
    return *std::move(out);
  }
  // Fewer heads than ranks: gather the keys and values of every frame instead ([B, h, N, D]).
  absl::StatusOr<at::Tensor> kv = parallel::GatherSequence(ulysses, at::stack({k, v}, 0), 3);
  TORCH_CHECK(kv.ok(), "ltx2 video self-attention: ", kv.status().ToString());
  if (m.has_value()) m = m->narrow(-2, offset, q.size(2));  // this rank's query rows
  return models::Attention(q, (*kv)[0], (*kv)[1], m);
}

at::Tensor ShardedKeysAttention(parallel::Communicator& ulysses, const at::Tensor& q,
                                const at::Tensor& k, const at::Tensor& v) {
  // fp32 partial result and log-sum-exp over the local keys, travelling as one tensor.
  auto [out, lse] = parallel::AttentionWithLse(q, k, v, at::Tensor());
  at::Tensor packed = at::cat({out, lse}, -1).unsqueeze(0);  // [1, B, h, Sq, D + 1]
  absl::StatusOr<at::Tensor> all = ulysses.AllGather(packed);
  TORCH_CHECK(all.ok(), "ltx2 video-to-audio attention: ", all.status().ToString());
  const int64_t d = q.size(-1);
  std::vector<std::pair<at::Tensor, at::Tensor>> partials;
  for (int64_t r = 0; r < ulysses.size(); ++r) {
    at::Tensor p = (*all)[r];
    partials.emplace_back(p.narrow(-1, 0, d), p.narrow(-1, d, 1));
  }
  return parallel::MergeAttention(partials).to(q.scalar_type());
}

}  // namespace diffmesh::models::ltx2
