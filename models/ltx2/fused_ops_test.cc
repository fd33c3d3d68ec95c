// The fused paths of fused_ops.h against the ATen composition they replace. The kernels run only
// on a CUDA device (GPU builds); on the CPU the calls are the composition itself, which the
// fixture tests of the transformer cover.
#include "models/ltx2/fused_ops.h"

#include <ATen/ATen.h>

#include <cstdio>

#include "gtest/gtest.h"
#include "models/core/ops.h"
#include "models/ltx2/transformer_block.h"

namespace diffmesh::models::ltx2 {
namespace {

class FusedOpsTest : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
  at::TensorOptions Opts() const { return at::TensorOptions().device(at::kCUDA).dtype(GetParam()); }
  // fp32: the kernels and the composition agree to rounding; bf16/fp16: the composition rounds
  // several times, the kernel once, so compare both against a float32 evaluation instead.
  double Tolerance() const { return GetParam() == at::kFloat ? 1e-5 : 1e-2; }
};

TEST_P(FusedOpsTest, NormModulateMatchesComposition) {
  at::manual_seed(1);
  for (int64_t dim : {64, 2048, 4096}) {
    for (int64_t mod_tokens : {1, 7}) {  // per batch entry, per token (image-to-video)
      const int64_t b = 2, t = 7;
      at::Tensor x = at::randn({b, t, dim}, Opts()) * 3;
      at::Tensor weight = 1 + 0.1 * at::randn({dim}, Opts());
      // Rows as the block makes them: views of [B, T', rows, D] with a row stride.
      at::Tensor table = 0.2 * at::randn({b, mod_tokens, 6, dim}, Opts());
      std::vector<at::Tensor> rows = table.unbind(2);
      for (bool with_weight : {false, true}) {
        const at::Tensor w = with_weight ? weight : at::Tensor();
        at::Tensor got = NormModulate(x, w, rows[1], rows[0], 1e-6);
        at::Tensor want =
            NormModulate(x.to(at::kFloat), with_weight ? weight.to(at::kFloat) : at::Tensor(),
                         rows[1].to(at::kFloat), rows[0].to(at::kFloat), 1e-6);
        if (GetParam() == at::kFloat) {  // the composition itself, on the CPU
          at::Tensor cpu = RmsNormOptionalWeight(x.cpu(), w.defined() ? w.cpu() : w, 1e-6) *
                               (1 + rows[1].cpu()) + rows[0].cpu();
          want = cpu;
        }
        const double err = RelativeError(got.cpu().to(at::kFloat), want.cpu().to(at::kFloat));
        EXPECT_LE(err, Tolerance()) << "dim " << dim << " mod_tokens " << mod_tokens;
      }
      at::Tensor plain = NormModulate(x, at::Tensor(), at::Tensor(), at::Tensor(), 1e-6);
      at::Tensor plain_want = RmsNormOptionalWeight(x.cpu().to(at::kFloat), at::Tensor(), 1e-6);
      EXPECT_LE(RelativeError(plain.cpu().to(at::kFloat), plain_want), Tolerance());
    }
  }
}

TEST_P(FusedOpsTest, NormRopeMatchesComposition) {
  at::manual_seed(2);
  struct Case {
    int64_t heads, head_dim, table_batch;
  };
  for (const Case& c : {Case{32, 128, 2}, Case{32, 64, 1}, Case{4, 16, 2}}) {
    const int64_t b = 2, t = 9, dim = c.heads * c.head_dim;
    at::Tensor x = at::randn({b, t, dim}, Opts());
    at::Tensor weight = 1 + 0.1 * at::randn({dim}, Opts());
    const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
    at::Tensor angles = at::randn({c.table_batch, c.heads, t, c.head_dim / 2}, f32);
    RopeTables tables{angles.cos(), angles.sin()};
    at::Tensor got = NormRope(x, weight, 1e-6, &tables, RopeType::kSplit);
    RopeTables cpu_tables{tables.cos.cpu(), tables.sin.cpu()};
    at::Tensor want = ApplyRope(RmsNorm(x.cpu().to(at::kFloat), weight.cpu().to(at::kFloat), 1e-6),
                                cpu_tables, RopeType::kSplit);
    const double err = RelativeError(got.cpu().to(at::kFloat), want);
    std::printf("norm_rope %s heads %ld x %ld rel err %.3g\n", c10::toString(GetParam()),
                static_cast<long>(c.heads), static_cast<long>(c.head_dim), err);
    EXPECT_LE(err, Tolerance());
  }
  // No rotation (the text cross-attention's q and k): the plain RMSNorm across heads.
  for (int64_t dim : {2048, 4096, 100}) {
    at::Tensor x = at::randn({2, 9, dim}, Opts()) * 2;
    at::Tensor weight = 1 + 0.1 * at::randn({dim}, Opts());
    at::Tensor got = NormRope(x, weight, 1e-6, nullptr, RopeType::kSplit);
    at::Tensor want = RmsNorm(x.cpu().to(at::kFloat), weight.cpu().to(at::kFloat), 1e-6);
    EXPECT_LE(RelativeError(got.cpu().to(at::kFloat), want), Tolerance()) << "dim " << dim;
  }
}

TEST_P(FusedOpsTest, GatedResidualTakesModulationRows) {
  at::manual_seed(4);
  // Gates as the block makes them: rows of a [B|1, T|1, 9, D] modulation table; a width the
  // vector kernel does not take (100 bf16 = 200 bytes) and an unaligned gate fall back to ATen.
  struct Case {
    int64_t dim, gate_batch, gate_tokens;
    bool unaligned;
  };
  for (const Case& c : {Case{4096, 1, 1, false}, Case{2048, 2, 7, false}, Case{100, 2, 1, false},
                        Case{256, 1, 1, true}}) {
    const int64_t b = 2, t = 7;
    at::Tensor x = at::randn({b, t, c.dim}, Opts());
    at::Tensor v = at::randn({b, t, c.dim}, Opts());
    at::Tensor table = at::randn({c.gate_batch * c.gate_tokens * 9 * c.dim + 1}, Opts());
    at::Tensor rows = table.narrow(0, c.unaligned ? 1 : 0, table.numel() - 1)
                          .view({c.gate_batch, c.gate_tokens, 9, c.dim});
    at::Tensor gate = rows.unbind(2)[5];
    at::Tensor got = AddGated(x, v, gate);
    at::Tensor want = x.cpu().to(at::kFloat) + v.cpu().to(at::kFloat) * gate.cpu().to(at::kFloat);
    ASSERT_EQ(got.sizes(), x.sizes());
    EXPECT_LE(RelativeError(got.cpu().to(at::kFloat), want), Tolerance())
        << "dim " << c.dim << " gate " << c.gate_batch << "x" << c.gate_tokens;
  }
}

TEST_P(FusedOpsTest, GatedResidualAndGeluLinear) {
  at::manual_seed(3);
  at::Tensor x = at::randn({2, 5, 256}, Opts());
  at::Tensor v = at::randn({2, 5, 256}, Opts());
  at::Tensor g = at::randn({2, 1, 256}, Opts());
  EXPECT_LE(RelativeError(AddGated(x, v, g).cpu().to(at::kFloat),
                          (x.cpu() + v.cpu() * g.cpu()).to(at::kFloat)),
            Tolerance());
  at::Tensor w = 0.05 * at::randn({1024, 256}, Opts());
  at::Tensor bias = 0.1 * at::randn({1024}, Opts());
  at::Tensor got = LinearGeluTanh(x, w, bias);
  at::Tensor want = at::gelu(at::linear(x.cpu().to(at::kFloat), w.cpu().to(at::kFloat),
                                        bias.cpu().to(at::kFloat)),
                             "tanh");
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_LE(RelativeError(got.cpu().to(at::kFloat), want), Tolerance());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, FusedOpsTest,
                         ::testing::Values(at::kFloat, at::kBFloat16, at::kHalf));

}  // namespace
}  // namespace diffmesh::models::ltx2
