#include "models/ltx2/transformer_parallel.h"

#include <cmath>
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

namespace {

// Attention of q [B, h, Sq, D] over one block of keys/values [B, h, L, D] with its
// log-sum-exp, in fp32: `mask` additive, broadcastable to [B, h, Sq, L] (these queries, these
// keys), or undefined. → {out [B, h, Sq, D], lse [B, h, Sq, 1]}.
std::pair<at::Tensor, at::Tensor> BlockAttention(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, const at::Tensor& mask) {
  if (!mask.defined()) return parallel::AttentionWithLse(q, k, v, at::Tensor());
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor s = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-2, -1)) * scale +
                 mask.to(at::kFloat);
  at::Tensor m = std::get<0>(s.max(-1, /*keepdim=*/true));
  m = at::where(at::isinf(m), at::zeros_like(m), m);  // a row masked out entirely: out 0, lse -inf
  at::Tensor p = at::exp(s - m);
  at::Tensor l = p.sum(-1, /*keepdim=*/true);
  at::Tensor out = at::matmul(p, v.to(at::kFloat)) / at::clamp_min(l, 1e-30);
  return {out, m + at::log(l)};
}

// Ring attention: queries q [B, h, Sq, D] at global rows [q_begin, q_begin + Sq) over the whole
// sequence, whose keys/values come as R ring blocks of L tokens, block j (global keys
// [j·L, (j+1)·L)) held by ring rank j; `kv` [2, B, h, L, D] is this rank's. Each step sends the
// block in hand to the next ring rank while attending to it; partials merge in block order.
at::Tensor RingAttention(parallel::Communicator& ring, const at::Tensor& q, at::Tensor kv,
                         const std::optional<at::Tensor>& mask, int64_t q_begin) {
  const int64_t block_len = kv.size(3);
  at::Tensor rows;  // this rank's query rows of the whole mask
  if (mask.has_value()) rows = mask->narrow(-2, q_begin, q.size(2));
  std::vector<std::pair<at::Tensor, at::Tensor>> partials(ring.size());
  const absl::Status status =
      parallel::ForEachRingBlock(ring, std::move(kv), [&](int src, const at::Tensor& block) {
        at::Tensor block_mask =
            rows.defined() ? rows.narrow(-1, src * block_len, block_len) : at::Tensor();
        partials[src] = BlockAttention(q, block[0], block[1], block_mask);
      });
  TORCH_CHECK(status.ok(), "ltx2 video self-attention: ", status.ToString());
  return parallel::MergeAttention(partials).to(q.scalar_type());
}

}  // namespace

at::Tensor FrameShardedSelfAttention(parallel::Communicator* ulysses, parallel::Communicator* ring,
                                     const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& mask, int64_t offset) {
  const int u = GroupSize(ulysses), R = GroupSize(ring);
  std::optional<at::Tensor> m;
  if (mask.defined()) m = mask.to(q.scalar_type());
  // Queries qf at global rows [q_begin, q_begin + Sq) over the whole sequence, given this ring
  // rank's ring block of keys/values kf/vf (the whole sequence when R = 1).
  auto over_ring = [&](const at::Tensor& qf, const at::Tensor& kf, const at::Tensor& vf,
                       int64_t q_begin) {
    if (R > 1) return RingAttention(*ring, qf, at::stack({kf, vf}, 0), m, q_begin);
    std::optional<at::Tensor> rows = m;
    if (m.has_value() && qf.size(2) != m->size(-2)) rows = m->narrow(-2, q_begin, qf.size(2));
    return models::Attention(qf, kf, vf, rows);
  };
  if (u == 1) return over_ring(q, k, v, offset);
  if (q.size(1) % u == 0) {
    // After the all-to-all this rank holds its ring block (U shards, global tokens from
    // ring rank · U·n on) for h/U heads.
    const int64_t block_begin = static_cast<int64_t>(R > 1 ? ring->rank() : 0) * u * q.size(2);
    parallel::UlyssesOptions options;
    options.inner = [&](const at::Tensor& qf, const at::Tensor& kf, const at::Tensor& vf) {
      return over_ring(qf, kf, vf, block_begin);
    };
    absl::StatusOr<at::Tensor> out = parallel::UlyssesAttention(*ulysses, q, k, v, options);
    TORCH_CHECK(out.ok(), "ltx2 video self-attention: ", out.status().ToString());
    return *std::move(out);
  }
  // Fewer heads than Ulysses ranks: gather the keys and values of the ring block instead
  // ([B, h, U·n, D]); the queries stay this rank's.
  absl::StatusOr<at::Tensor> kv = parallel::GatherSequence(*ulysses, at::stack({k, v}, 0), 3);
  TORCH_CHECK(kv.ok(), "ltx2 video self-attention: ", kv.status().ToString());
  return over_ring(q, (*kv)[0], (*kv)[1], offset);
}

at::Tensor ShardedKeysAttention(parallel::Communicator* ulysses, parallel::Communicator* ring,
                                const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  // fp32 partial result and log-sum-exp over the local keys, travelling as one tensor.
  auto [out, lse] = parallel::AttentionWithLse(q, k, v, at::Tensor());
  at::Tensor packed = at::cat({out, lse}, -1).unsqueeze(0);  // [1, B, h, Sq, D + 1]
  // Over Ulysses, then ring: row u + U·r of [U·R, B, h, Sq, D + 1] is shard u + U·r's.
  for (parallel::Communicator* group : {ulysses, ring}) {
    if (GroupSize(group) == 1) continue;
    absl::StatusOr<at::Tensor> all = group->AllGather(packed);
    TORCH_CHECK(all.ok(), "ltx2 video-to-audio attention: ", all.status().ToString());
    packed = *std::move(all);
  }
  const int64_t d = q.size(-1);
  std::vector<std::pair<at::Tensor, at::Tensor>> partials;
  for (int64_t s = 0; s < packed.size(0); ++s) {
    at::Tensor p = packed[s];
    partials.emplace_back(p.narrow(-1, 0, d), p.narrow(-1, d, 1));
  }
  return parallel::MergeAttention(partials).to(q.scalar_type());
}

}  // namespace diffmesh::models::ltx2
