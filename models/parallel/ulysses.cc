#include "models/parallel/ulysses.h"

#include <exception>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"
#include "models/core/ops.h"

namespace diffmesh::models::parallel {
namespace {

std::string Shape(const at::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

// xs: N tensors [B, H, S, D] (sequence shard, all heads, any strides) → [N, B, H/U, U·S, D]
// (full sequence, this rank's heads). Head block j goes to rank j; the block from rank i is
// sequence shard i, so concatenating in rank order restores the sequence. The N tensors travel
// in one all-to-all, packed straight into the send buffer (one copy each).
absl::StatusOr<at::Tensor> ScatterHeads(Communicator& group, const std::vector<at::Tensor>& xs) {
  const int64_t u = group.size();
  const int64_t n = static_cast<int64_t>(xs.size());
  const int64_t b = xs[0].size(0), h = xs[0].size(1), s = xs[0].size(2), d = xs[0].size(3);
  // [U (destination rank), N, B, H/U, S, D]
  at::Tensor send = at::empty({u, n, b, h / u, s, d}, xs[0].options());
  for (int64_t i = 0; i < n; ++i) {
    // [B, H, S, D] → [B, U, H/U, S, D] (a view) → [U, B, H/U, S, D]
    send.select(1, i).copy_(xs[i].reshape({b, u, h / u, s, d}).permute({1, 0, 2, 3, 4}));
  }
  ASSIGN_OR_RETURN(at::Tensor recv, group.AllToAllSingle(send));
  // recv [U (source = shard), N, B, H/U, S, D] → [N, B, H/U, U, S, D] → [N, B, H/U, U·S, D].
  return recv.permute({1, 2, 3, 0, 4, 5}).reshape({n, b, h / u, u * s, d});
}

// Inverse of ScatterHeads: y [B, H/U, U·S, D] → [B, H, S, D].
absl::StatusOr<at::Tensor> GatherHeads(Communicator& group, const at::Tensor& y) {
  const int64_t u = group.size();
  const int64_t b = y.size(0), hl = y.size(1), s = y.size(2) / u, d = y.size(3);
  // [B, H/U, U, S, D] → [U (destination = shard owner), B, H/U, S, D].
  at::Tensor send = y.reshape({b, hl, u, s, d}).permute({2, 0, 1, 3, 4});
  ASSIGN_OR_RETURN(at::Tensor recv, group.AllToAllSingle(send));
  // recv [U (source = head block), B, H/U, S, D] → [B, U, H/U, S, D] → [B, H, S, D].
  return recv.permute({1, 0, 2, 3, 4}).reshape({b, u * hl, s, d});
}

absl::Status VerifyShapes(Communicator& group, const at::Tensor& q, const at::Tensor& k) {
  // Every rank's (B, H, S, D, H_kv, S_kv) must agree; gathered so each rank can name the culprit.
  at::Tensor mine = at::tensor(std::vector<int64_t>{q.size(0), q.size(1), q.size(2), q.size(3),
                                                    k.size(1), k.size(2)},
                               at::kLong)
                        .to(group.device())
                        .unsqueeze(0);
  ASSIGN_OR_RETURN(at::Tensor all, group.AllGather(mine));
  all = all.cpu();
  for (int r = 0; r < group.size(); ++r) {
    if (!at::equal(all[r], all[group.rank()])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Ulysses attention: rank ", r, " holds q/k [B, H, S, D, H_kv, S_kv] = ",
          absl::StrJoin(std::vector<int64_t>(all[r].data_ptr<int64_t>(),
                                             all[r].data_ptr<int64_t>() + 6),
                        ", "),
          ", rank ", group.rank(), " holds ",
          absl::StrJoin(std::vector<int64_t>(all[group.rank()].data_ptr<int64_t>(),
                                             all[group.rank()].data_ptr<int64_t>() + 6),
                        ", "),
          "; shards must be equal (split the sequence with ShardSequence)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<at::Tensor> UlyssesAttention(Communicator& group, const at::Tensor& q,
                                            const at::Tensor& k, const at::Tensor& v,
                                            const UlyssesOptions& options) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4) {
    return absl::InvalidArgumentError(absl::StrCat("Ulysses attention: q ", Shape(q), ", k ",
                                                   Shape(k), ", v ", Shape(v),
                                                   " must be [B, heads, S, D]"));
  }
  if (k.sizes() != v.sizes() || q.size(0) != k.size(0) || q.size(2) != k.size(2) ||
      q.size(3) != k.size(3)) {
    return absl::InvalidArgumentError(absl::StrCat("Ulysses attention: q ", Shape(q), ", k ",
                                                   Shape(k), ", v ", Shape(v),
                                                   " disagree (self-attention shapes expected)"));
  }
  if (q.scalar_type() != k.scalar_type() || q.scalar_type() != v.scalar_type()) {
    return absl::InvalidArgumentError("Ulysses attention: q, k and v must share a dtype");
  }
  const int u = group.size();
  if (q.size(1) % u != 0 || k.size(1) % u != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Ulysses attention: ", q.size(1),
                                                   " query / ", k.size(1),
                                                   " key heads not divisible by group size ", u));
  }
  if (options.verify_shapes) RETURN_IF_ERROR(VerifyShapes(group, q, k));

  at::Tensor qf, kf, vf;
  try {
    if (q.sizes() == k.sizes()) {
      // One all-to-all for all three.
      ASSIGN_OR_RETURN(at::Tensor qkv, ScatterHeads(group, {q, k, v}));
      qf = qkv[0], kf = qkv[1], vf = qkv[2];
    } else {
      ASSIGN_OR_RETURN(at::Tensor qs, ScatterHeads(group, {q}));
      ASSIGN_OR_RETURN(at::Tensor kv, ScatterHeads(group, {k, v}));
      qf = qs[0], kf = kv[0], vf = kv[1];
    }
    // [B, H/U, S_full, D]
    at::Tensor out = options.inner ? options.inner(qf, kf, vf) : models::Attention(qf, kf, vf);
    if (out.sizes() != qf.sizes()) {
      return absl::InternalError(absl::StrCat("Ulysses attention: inner attention returned ",
                                              Shape(out), " for q ", Shape(qf)));
    }
    return GatherHeads(group, out);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("Ulysses attention: ", e.what()));
  }
}

LocalAttentionFn MakeUlyssesAttentionFn(Communicator& group, UlyssesOptions options) {
  return [&group, options = std::move(options)](const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v) {
    absl::StatusOr<at::Tensor> out = UlyssesAttention(group, q, k, v, options);
    TORCH_CHECK(out.ok(), out.status().ToString());
    return *std::move(out);
  };
}

absl::StatusOr<at::Tensor> ShardSequence(const at::Tensor& full, int64_t dim, int rank,
                                         int parts) {
  if (dim < -full.dim() || dim >= full.dim()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShardSequence: dim ", dim, " out of range for ", Shape(full)));
  }
  if (dim < 0) dim += full.dim();
  if (parts < 1 || rank < 0 || rank >= parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShardSequence: rank ", rank, " of ", parts, " parts"));
  }
  const int64_t length = full.size(dim);
  if (length % parts != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ShardSequence: sequence length ", length, " (dim ", dim, " of ", Shape(full),
        ") not divisible by ", parts, " sequence-parallel ranks; choose a resolution whose token "
        "count divides, or fewer ranks"));
  }
  const int64_t shard = length / parts;
  return full.narrow(dim, rank * shard, shard);
}

absl::StatusOr<at::Tensor> GatherSequence(Communicator& group, const at::Tensor& shard,
                                          int64_t dim) {
  if (dim < -shard.dim() || dim >= shard.dim()) {
    return absl::InvalidArgumentError(
        absl::StrCat("GatherSequence: dim ", dim, " out of range for ", Shape(shard)));
  }
  if (dim < 0) dim += shard.dim();
  // Gather along dim 0 of the moved view; the result is moved back (a view of the buffer).
  ASSIGN_OR_RETURN(at::Tensor gathered, group.AllGather(shard.movedim(dim, 0)));
  return gathered.movedim(0, dim);
}

}  // namespace diffmesh::models::parallel
