#include "models/parallel/joint_attention.h"

#include <cmath>
#include <future>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/core/ops.h"

namespace diffmesh::models::parallel {

std::pair<at::Tensor, at::Tensor> AttentionWithLse(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v,
                                                   const at::Tensor& key_valid) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor s = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-2, -1)) * scale;
  if (key_valid.defined()) {
    s = s.masked_fill(key_valid.logical_not().view({1, 1, 1, -1}),
                      -std::numeric_limits<float>::infinity());
  }
  at::Tensor m = std::get<0>(s.max(-1, /*keepdim=*/true));
  at::Tensor m_safe = at::where(at::isinf(m), at::zeros_like(m), m);
  at::Tensor p = at::exp(s - m_safe);
  at::Tensor l = p.sum(-1, /*keepdim=*/true);
  at::Tensor out = at::matmul(p, v.to(at::kFloat)) / at::clamp_min(l, 1e-30);
  at::Tensor lse = m_safe + at::log(l);  // log(0) = -inf for rows without a valid key
  return {out, lse};
}

at::Tensor MergeAttention(const std::vector<std::pair<at::Tensor, at::Tensor>>& partials) {
  std::vector<at::Tensor> lses;
  for (const auto& p : partials) lses.push_back(p.second);
  at::Tensor total = at::logsumexp(at::stack(lses, 0), 0);  // [B, H, Sq, 1]
  at::Tensor safe_total = at::where(at::isinf(total), at::zeros_like(total), total);
  at::Tensor out = at::zeros_like(partials[0].first);
  for (const auto& [o, lse] : partials) out = out + at::exp(lse - safe_total) * o;
  return out;
}

namespace {

// Valid-key mask of image positions [begin, begin + len) given `image_len` real tokens;
// undefined when the block has no padding.
at::Tensor ImageKeyMask(int64_t begin, int64_t len, int64_t image_len, const at::Device& device) {
  if (begin + len <= image_len) return at::Tensor();
  return at::arange(begin, begin + len, at::TensorOptions().dtype(at::kLong).device(device)) < image_len;
}

}  // namespace

absl::StatusOr<at::Tensor> JointSequenceParallelAttention(const JointAttentionGroups& groups,
                                                          const at::Tensor& q,
                                                          const at::Tensor& k,
                                                          const at::Tensor& v, int64_t text_len,
                                                          int64_t image_len) {
  const int U = groups.ulysses != nullptr ? groups.ulysses->size() : 1;
  const int R = groups.ring != nullptr ? groups.ring->size() : 1;
  const int u = groups.ulysses != nullptr ? groups.ulysses->rank() : 0;
  const int r = groups.ring != nullptr ? groups.ring->rank() : 0;
  if (q.dim() != 4 || k.sizes() != q.sizes() || v.sizes() != q.sizes()) {
    return absl::InvalidArgumentError("joint attention: q, k, v must be [B, H, T + n, D] alike");
  }
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3);
  const int64_t n = q.size(2) - text_len;
  if (n < 0) return absl::InvalidArgumentError("joint attention: text_len exceeds the sequence");
  if (H % U != 0) {
    return absl::InvalidArgumentError(absl::StrCat("joint attention: ", H, " heads do not divide by ulysses ", U));
  }
  const int64_t h = H / U;
  const int64_t T = text_len;

  // 1. Ulysses: [3, B, H, n, D] → per destination u': its heads → received per source u':
  //    its sequence shard for my heads → [3, B, h, U·n, D] (the ring block, in shard order).
  at::Tensor qkv = at::stack({q.narrow(2, T, n), k.narrow(2, T, n), v.narrow(2, T, n)}, 0);
  at::Tensor block;  // [3, B, h, U·n, D]
  if (U > 1) {
    at::Tensor send = qkv.view({3, B, U, h, n, D}).permute({2, 0, 1, 3, 4, 5}).contiguous();
    ASSIGN_OR_RETURN(at::Tensor recv, groups.ulysses->AllToAllSingle(send));
    block = recv.view({U, 3, B, h, n, D}).permute({1, 2, 3, 0, 4, 5}).reshape({3, B, h, U * n, D});
  } else {
    block = qkv;
  }
  at::Tensor text = at::stack({q.narrow(2, 0, T), k.narrow(2, 0, T), v.narrow(2, 0, T)}, 0)
                        .narrow(2, u * h, h);  // [3, B, h, T, D]
  const int64_t block_len = U * n;

  // Queries: the text prefix, then the ring block.
  at::Tensor queries = at::cat({text[0], block[0]}, 2);  // [B, h, T + U·n, D]
  at::Tensor out;
  if (R == 1) {
    at::Tensor keys = at::cat({text[1], block[1]}, 2), values = at::cat({text[2], block[2]}, 2);
    at::Tensor image_mask = ImageKeyMask(0, block_len, image_len, q.device());
    if (!image_mask.defined()) {
      out = models::Attention(queries, keys, values);
    } else {
      at::Tensor valid = at::cat({at::ones({T}, image_mask.options()), image_mask});
      at::Tensor additive = at::zeros({T + block_len}, q.options().dtype(at::kFloat))
                                .masked_fill(valid.logical_not(), -std::numeric_limits<float>::infinity());
      out = models::Attention(queries, keys, values, additive.view({1, 1, 1, -1}).to(q.scalar_type()));
    }
  } else {
    // 2. Ring: text keys once, then image blocks; the next block's transfer overlaps this
    //    block's attention. Partials are merged in block order (text, ring block 0..R-1).
    std::vector<std::pair<at::Tensor, at::Tensor>> partials(R + 1);
    partials[0] = AttentionWithLse(queries, text[1], text[2], at::Tensor());
    RETURN_IF_ERROR(ForEachRingBlock(
        *groups.ring, block.narrow(0, 1, 2).contiguous(),  // [2, B, h, U·n, D]
        [&](int src, const at::Tensor& kv) {
          at::Tensor valid = ImageKeyMask(static_cast<int64_t>(src) * block_len, block_len,
                                          image_len, q.device());
          partials[src + 1] = AttentionWithLse(queries, kv[0], kv[1], valid);
        }));
    out = MergeAttention(partials);
  }
  out = out.to(q.scalar_type());  // [B, h, T + U·n, D]

  // 4. Back: destination u' gets its image shard for my heads plus my text heads:
  //    send [U, B, h, n + T, D] → recv from u' its heads: image for my shard + its text heads.
  at::Tensor text_out = out.narrow(2, 0, T);
  at::Tensor image_out = out.narrow(2, T, block_len);
  if (U == 1) return at::cat({text_out, image_out}, 2);
  at::Tensor send = at::cat({image_out.view({B, h, U, n, D}).permute({2, 0, 1, 3, 4}),
                             text_out.unsqueeze(0).expand({U, B, h, T, D})},
                            3)
                        .contiguous();  // [U, B, h, n + T, D]
  ASSIGN_OR_RETURN(at::Tensor recv, groups.ulysses->AllToAllSingle(send));
  // recv [U(source = head group), B, h, n + T, D] → heads in source order.
  at::Tensor gathered = recv.permute({1, 0, 2, 3, 4}).reshape({B, H, n + T, D});
  return at::cat({gathered.narrow(2, n, T), gathered.narrow(2, 0, n)}, 2);
}

absl::Status ForEachRingBlock(Communicator& ring, at::Tensor kv,
                              const std::function<void(int src, const at::Tensor& block)>& attend) {
  const int R = ring.size(), r = ring.rank();
  const int next = (r + 1) % R, prev = (r + R - 1) % R;
  for (int step = 0; step < R; ++step) {
    const int src = (r - step + R) % R;  // ring rank whose block `kv` holds
    at::Tensor incoming;
    std::future<absl::Status> transfer;
    if (step + 1 < R) {
      incoming = at::empty_like(kv);
      transfer = std::async(std::launch::async, [&] {
        return ring.SendRecv(kv, next, incoming, prev, /*tag=*/step);
      });
    }
    attend(src, kv);
    if (transfer.valid()) {
      absl::Status status = transfer.get();
      if (!status.ok()) {
        return absl::Status(status.code(),
                            absl::StrCat("ring step ", step, ": ", status.message()));
      }
      kv = incoming;
    }
  }
  return absl::OkStatus();
}

}  // namespace diffmesh::models::parallel
