// GPU builds: every LTX-2 component on a CUDA device, from its reference fixture. fp32 on the GPU
// matches the reference (1e-4); bf16 on the GPU stays within 1e-2 of the GPU's own fp32 output
// (the serving dtype's cost, measured per component and printed as a table line
// "bf16 <component> <variant> rel err ..."). Skipped where no CUDA device is present. The
// transformer has its own CUDA test in transformer_test.cc.
#include <ATen/ATen.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/testing/fixture_tensor.h"
#include "models/core/weights.h"
#include "models/ltx2/audio_vae.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/gemma3.h"
#include "models/ltx2/upsampler.h"
#include "models/ltx2/video_vae.h"
#include "models/ltx2/vocoder.h"

namespace diffmesh::models::ltx2 {
namespace {

constexpr double kReferenceTolerance = 1e-4;  // fp32 on the GPU vs the reference
constexpr double kBf16Tolerance = 1e-2;       // bf16 vs fp32, both on the GPU

const std::vector<std::string> kVariants = {"v20", "v23"};

WeightMap OnCuda(const WeightMap& weights, at::ScalarType dtype) {
  WeightMap out;
  for (const auto& [name, t] : weights) {
    out.emplace(name, t.is_floating_point() ? t.to(at::kCUDA, dtype) : t.to(at::kCUDA));
  }
  return out;
}

at::Tensor Fixture(const std::string& file, const std::string& name) {
  return ReadFixtureTensor(FixturePath(file), name);
}

// Runs `run` (inputs already on the GPU in `dtype`) in fp32 and bf16; checks fp32 against
// `expected` and bf16 against fp32.
void CheckComponent(const std::string& component, const std::string& variant,
                    const std::function<at::Tensor(at::ScalarType)>& run,
                    const at::Tensor& expected) {
  const at::Tensor f32 = run(at::kFloat).cpu().to(at::kFloat);
  const at::Tensor b16 = run(at::kBFloat16).cpu().to(at::kFloat);
  ASSERT_EQ(f32.sizes(), expected.sizes()) << component;
  ASSERT_EQ(b16.sizes(), expected.sizes()) << component;
  const double ref_err = RelativeError(f32, expected.to(at::kFloat));
  const double bf16_err = RelativeError(b16, f32);
  std::printf("bf16 %-14s %s rel err vs fp32 %.3g   (fp32 on cuda vs reference %.3g)\n",
              component.c_str(), variant.c_str(), bf16_err, ref_err);
  EXPECT_LE(ref_err, kReferenceTolerance) << component << " " << variant;
  EXPECT_LE(bf16_err, kBf16Tolerance) << component << " " << variant;
}

class Ltx2CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
    // fp32 means fp32: TF32 convolutions alone put the VAE 1e-3 away from the reference.
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
};

TEST_F(Ltx2CudaTest, Connectors) {
  for (const std::string& v : kVariants) {
    const std::string io = "ltx2-ref-a/" + v + "/connectors_io.safetensors";
    auto cpu = TextConnectors::Load(FixturePath("ltx2-ref-a/" + v + "/connectors"));
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    const at::Tensor hidden = Fixture(io, "in.text_encoder_hidden_states");
    const at::Tensor mask = Fixture(io, "in.attention_mask");
    for (const char* stream : {"video", "audio"}) {
      auto run = [&](at::ScalarType dtype) {
        auto model = TextConnectors::Create((*cpu)->config(), OnCuda((*cpu)->weights(), dtype));
        EXPECT_TRUE(model.ok()) << model.status();
        auto out = (*model)->Forward(hidden.to(at::kCUDA, dtype), mask.to(at::kCUDA));
        return std::string(stream) == "video" ? out.video_text_embedding
                                              : out.audio_text_embedding;
      };
      CheckComponent(std::string("connectors.") + stream, v, run,
                     Fixture(io, std::string("out.") + stream + "_text_embedding"));
    }
  }
}

TEST_F(Ltx2CudaTest, VideoVaeDecoder) {
  for (const std::string& v : kVariants) {
    const std::string io = "ltx2-ref-a/" + v + "/vae_decode_io.safetensors";
    const at::Tensor z = Fixture(io, "in.z");
    auto run = [&](at::ScalarType dtype) {
      auto vae = Ltx2VideoDecoder::Load(FixturePath("ltx2-ref-a/" + v + "/vae"), dtype, at::kCUDA);
      EXPECT_TRUE(vae.ok()) << vae.status();
      return (*vae)->Decode(z.to(at::kCUDA, dtype));
    };
    CheckComponent("video_vae", v, run, Fixture(io, "out.sample"));
  }
}

TEST_F(Ltx2CudaTest, AudioVaeDecoder) {
  for (const std::string& v : kVariants) {
    const std::string io = "ltx2-ref-a/" + v + "/audio_vae_decode_io.safetensors";
    const at::Tensor z = Fixture(io, "in.z");
    auto run = [&](at::ScalarType dtype) {
      auto vae =
          AudioVaeDecoder::Load(FixturePath("ltx2-ref-a/" + v + "/audio_vae"), dtype, at::kCUDA);
      EXPECT_TRUE(vae.ok()) << vae.status();
      return (*vae)->Decode(z.to(at::kCUDA, dtype));
    };
    CheckComponent("audio_vae", v, run, Fixture(io, "out.mel"));
  }
}

// LTX2VocoderWithBWE (2.3) runs in float32 whatever dtype it is loaded with; the mel input
// still arrives in the serving dtype.
TEST_F(Ltx2CudaTest, Vocoder) {
  for (const std::string& v : kVariants) {
    const std::string io = "ltx2-ref-a/" + v + "/vocoder_io.safetensors";
    const at::Tensor mel = Fixture(io, "in.mel");
    auto run = [&](at::ScalarType dtype) {
      auto voc = Vocoder::Load(FixturePath("ltx2-ref-a/" + v + "/vocoder"), dtype, at::kCUDA);
      EXPECT_TRUE(voc.ok()) << voc.status();
      return (*voc)->Run(mel.to(at::kCUDA, dtype));
    };
    CheckComponent("vocoder", v, run, Fixture(io, "out.waveform"));
  }
}

TEST_F(Ltx2CudaTest, LatentUpsampler) {
  for (const std::string& v : kVariants) {
    const std::string set = "ltx2-upsampler-ref-a/";
    const std::string io = set + "upsampler_" + v + "_io.safetensors";
    const at::Tensor latents = Fixture(io, "latents_raw");
    auto run = [&](at::ScalarType dtype) {
      auto up = Ltx2LatentUpsampler::Load(FixturePath(set + "latent_upsampler_" + v), dtype,
                                          at::kCUDA);
      EXPECT_TRUE(up.ok()) << up.status();
      return (*up)->Forward(latents.to(at::kCUDA, dtype));
    };
    CheckComponent("upsampler", v, run, Fixture(io, "forward.out"));
  }
}

// All hidden states (embeddings + every layer), stacked, on the fixture's left-padded batch.
TEST_F(Ltx2CudaTest, Gemma3) {
  const std::string io = "gemma3-ref-a/gemma3_io.safetensors";
  auto cpu = Gemma3TextModel::Load(FixturePath("gemma3-ref-a/gemma3_text_model"));
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const at::Tensor ids = Fixture(io, "in.input_ids");
  const at::Tensor mask = Fixture(io, "in.attention_mask");
  // Padded positions are excluded: the reference's padded query rows are not a contract.
  const at::Tensor keep = mask.to(at::kBool).unsqueeze(0).unsqueeze(-1);
  auto run = [&](at::ScalarType dtype) {
    auto model = Gemma3TextModel::Create((*cpu)->config(), OnCuda((*cpu)->weights(), dtype));
    EXPECT_TRUE(model.ok()) << model.status();
    const std::vector<at::Tensor> hidden =
        (*model)->Forward(ids.to(at::kCUDA), mask.to(at::kCUDA));
    return at::stack(hidden).cpu().to(at::kFloat).masked_fill(keep.logical_not(), 0);
  };
  const at::Tensor expected = Fixture(io, "out.hidden_states").masked_fill(keep.logical_not(), 0);
  CheckComponent("gemma3", "text", run, expected);
}

}  // namespace
}  // namespace diffmesh::models::ltx2
