// Ulysses sequence-parallel attention (DeepSpeed-Ulysses): each rank of a group of U holds a
// contiguous 1/U of the sequence with all heads; an all-to-all trades that for all of the
// sequence with 1/U of the heads, attention runs locally, and a second all-to-all trades back.
//
// Contract: the full sequence is split into U EQUAL contiguous shards, rank i holding positions
// [i·S/U, (i+1)·S/U) (ShardSequence). A length not divisible by U is an error rather than
// padded: padding would change softmax over the padded keys unless masked, and the DiT's
// attention takes no mask. The head count must divide by U.
#ifndef DIFFMESH_MODELS_PARALLEL_ULYSSES_H_
#define DIFFMESH_MODELS_PARALLEL_ULYSSES_H_

#include <ATen/ATen.h>

#include <functional>

#include "absl/status/statusor.h"
#include "models/parallel/comm.h"

namespace diffmesh::models::parallel {

// q/k/v [B, heads, S, D] → [B, heads, S, D]; same signature as the DiT's AttentionFn.
using LocalAttentionFn =
    std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v)>;

struct UlyssesOptions {
  // Attention over the full sequence on the local heads. Empty: models::Attention (no mask,
  // scale 1/sqrt(D)).
  LocalAttentionFn inner;
  // All-gathers every rank's shapes first and fails with a clear error when the shards differ
  // (one tiny extra collective, and on CUDA a host sync: for tests and debugging).
  bool verify_shapes = false;
};

// q [B, H, S_local, D], k/v [B, H_kv, S_local, D] (H_kv divides H; both divide by the group
// size) on this rank's sequence shard → attention output [B, H, S_local, D] for the same shard,
// equal to full-sequence attention restricted to it. Collective over `group` (the Ulysses
// group, ranks ordered by shard).
absl::StatusOr<at::Tensor> UlyssesAttention(Communicator& group, const at::Tensor& q,
                                            const at::Tensor& k, const at::Tensor& v,
                                            const UlyssesOptions& options = {});

// UlyssesAttention as an AttentionFn for GlmImageDit::set_attention_fn. The DiT's forward has no
// Status path, so a failure throws c10::Error (as ATen ops do) with the status message. `group`
// must outlive the function.
LocalAttentionFn MakeUlyssesAttentionFn(Communicator& group, UlyssesOptions options = {});

// Rank `rank`'s shard of `full` along `dim` when split into `parts` equal contiguous pieces (a
// view). INVALID_ARGUMENT when full.size(dim) is not divisible by `parts`.
absl::StatusOr<at::Tensor> ShardSequence(const at::Tensor& full, int64_t dim, int rank, int parts);

// Inverse of ShardSequence over `group`: concatenates every rank's shard along `dim`.
absl::StatusOr<at::Tensor> GatherSequence(Communicator& group, const at::Tensor& shard,
                                          int64_t dim);

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_ULYSSES_H_
