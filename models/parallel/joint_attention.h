// Joint text+image attention under sequence parallelism (USP: Ulysses × ring).
//
// The image tokens of the whole sequence are split into sp = U·R equal contiguous shards
// (zero-padded at the end to a multiple of sp); sp rank s = u + U·r holds shard s. The text
// tokens are a replicated prefix on every rank. Per call:
//  1. Ulysses (U > 1): one all-to-all of packed Q/K/V trades this rank's shard with all heads
//     for the ring block of U shards [U·r·n, U·(r+1)·n) with heads/U heads; the text prefix just
//     keeps its heads slice (it is replicated).
//  2. Ring (R > 1): the image K/V blocks travel around the ring group (send/recv of the next
//     block overlapped with attention on the current one); the text keys are attended once,
//     locally. Partial results carry their log-sum-exp and are merged in a fixed block order,
//     so the replicated text outputs are bit-identical on every rank.
//  3. Padding keys (global image index >= image_len) are masked in every block.
//  4. One all-to-all returns each image shard's outputs to its owner together with every
//     rank's text heads (so no separate all-gather for the text).
#ifndef DIFFMESH_MODELS_PARALLEL_JOINT_ATTENTION_H_
#define DIFFMESH_MODELS_PARALLEL_JOINT_ATTENTION_H_

#include <ATen/ATen.h>

#include <functional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "models/parallel/comm.h"

namespace diffmesh::models::parallel {

struct JointAttentionGroups {
  // Ulysses group (ranks ordered by ulysses rank); null for U = 1.
  Communicator* ulysses = nullptr;
  // Ring group (ranks ordered by ring rank); null for R = 1.
  Communicator* ring = nullptr;
};

// q/k/v [B, H, T + n, D]: T text tokens then this rank's n image tokens (global image positions
// [image_offset, image_offset + n)). H divides by U. Returns [B, H, T + n, D] in q's dtype.
absl::StatusOr<at::Tensor> JointSequenceParallelAttention(const JointAttentionGroups& groups,
                                                          const at::Tensor& q,
                                                          const at::Tensor& k,
                                                          const at::Tensor& v, int64_t text_len,
                                                          int64_t image_len);

// One block of attention with its log-sum-exp, in fp32: q [B, H, Sq, D], k/v [B, H, Sk, D],
// `key_valid` [Sk] bool (undefined = all valid) → {out [B, H, Sq, D], lse [B, H, Sq, 1]};
// rows with no valid key give out 0 and lse -inf.
std::pair<at::Tensor, at::Tensor> AttentionWithLse(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v,
                                                   const at::Tensor& key_valid);

// Merges partial attentions (in the given order) by their log-sum-exp.
at::Tensor MergeAttention(const std::vector<std::pair<at::Tensor, at::Tensor>>& partials);

// The ring pass of ring attention: `kv` is this ring rank's block of keys/values. For each of
// the ring's R steps, `attend(src, block)` gets the block that ring rank `src` holds (its own
// first, then rank−1's, ...), while the next block travels on another thread (sent to rank+1,
// received from rank−1), so each transfer overlaps one block's attention. Returns the first
// transfer error (no later block is attended then).
absl::Status ForEachRingBlock(Communicator& ring, at::Tensor kv,
                              const std::function<void(int src, const at::Tensor& block)>& attend);

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_JOINT_ATTENTION_H_
