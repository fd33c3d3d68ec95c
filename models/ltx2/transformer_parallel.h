// Rank-aware pieces of the sharded LTX-2 transformer forward (transformer.h describes the
// layout): tensor-parallel weight and RoPE slices, the tp all-reduce, and the two attentions
// over video tokens sharded by frames (Ulysses × ring). Collective helpers throw c10::Error
// with the communicator's status (the block code has no Status path; Ltx2Transformer::Forward
// turns it into one).
#ifndef DIFFMESH_MODELS_LTX2_TRANSFORMER_PARALLEL_H_
#define DIFFMESH_MODELS_LTX2_TRANSFORMER_PARALLEL_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "models/ltx2/rope.h"
#include "models/parallel/comm.h"

namespace diffmesh::models::ltx2 {

// This rank's part of the heads / feed-forward columns.
struct TpSlice {
  int rank = 0;
  int size = 1;
};

// Size of `group`, 1 for none.
inline int GroupSize(const parallel::Communicator* group) {
  return group == nullptr ? 1 : group->size();
}
TpSlice SliceOf(const parallel::Communicator* tp);

// Part `slice.rank` of `t` cut along `dim` into slice.size equal parts, as its own tensor (so
// the whole one can be freed); `t` itself for size 1. Undefined stays undefined.
at::Tensor SliceForRank(const at::Tensor& t, int64_t dim, TpSlice slice);

// `tables` restricted to this rank's channels: split tables [B, H, T, r] keep heads band
// [rank·H/size, (rank+1)·H/size), interleaved [B, T, C] keep channels likewise. H (or C) must
// divide by size (checked at model creation).
RopeTables SliceRope(const RopeTables& tables, RopeType type, TpSlice slice);

// Sums `t` in place over `tp`; nothing for no group or a group of one.
void TpAllReduce(parallel::Communicator* tp, at::Tensor& t);

// Self-attention of frame-sharded tokens. The sequence is cut into U·R equal shards (U =
// size of `ulysses`, R = size of `ring`, null = 1); the rank of Ulysses rank u and ring rank r
// holds shard u + U·r, so a ring rank's U Ulysses ranks together hold one contiguous "ring
// block" of U shards. q/k/v [B, h, n, D] hold this rank's n tokens (global positions
// [offset, offset + n), every rank the same n) with this rank's h heads; `mask` additive,
// broadcastable to [B, h, N, N] over the WHOLE sequence (N = n·U·R) with its last two dims
// whole, or undefined. → [B, h, n, D], exact full-sequence attention for the local queries.
//  * Ulysses: all-to-alls (sequence for heads) when h divides by U, else an all-gather of the
//    keys and values of the ring block.
//  * Ring (R > 1): the key/value ring blocks travel around the ring group (send/recv of the
//    next overlapped with attention on the current one); the partial results, fp32 with their
//    log-sum-exp, are merged in block order. There is no joint (replicated) prefix: text comes
//    in by cross-attention.
at::Tensor FrameShardedSelfAttention(parallel::Communicator* ulysses, parallel::Communicator* ring,
                                     const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& mask, int64_t offset);

// Replicated queries q [B, h, Sq, D] (the same on every rank) over keys/values [B, h, n, D]
// sharded over `ulysses` × `ring` (shard u + U·r, as above; null = 1) → [B, h, Sq, D] in q's
// dtype: attention over all ranks' keys, merged by log-sum-exp in shard order so that the
// result is identical on every rank. No mask.
at::Tensor ShardedKeysAttention(parallel::Communicator* ulysses, parallel::Communicator* ring,
                                const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_TRANSFORMER_PARALLEL_H_
