// Every LTX-2 component in the precision it serves in on CUDA (ServingDtype), from its reference
// fixture, on the CUDA device when there is one, else on the CPU (bf16 kernels there too; no
// TF32, so float32-serving components match exactly there): float32 on that device matches the
// reference (1e-4) and the serving precision stays within 1e-2 of the device's own float32
// output (printed per component as "serving <component> <variant> ..."). The transformer's bf16
// check is in transformer_test.cc.
#include <ATen/ATen.h>

#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#include "models/core/testing/fixture_tensor.h"
#include "models/core/weights.h"
#include "models/ltx2/audio_vae.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/gemma3.h"
#include "models/ltx2/ltx2_spec.h"
#include "models/ltx2/upsampler.h"
#include "models/ltx2/video_vae.h"
#include "models/ltx2/vocoder.h"

namespace diffmesh::models::ltx2 {
namespace {

constexpr double kReferenceTolerance = 1e-4;  // fp32 on the device vs the reference
constexpr double kServingTolerance = 1e-2;    // serving precision vs fp32, both on the device

const std::vector<std::string> kVariants = {"v20", "v23"};

at::Device TestDevice() { return at::hasCUDA() ? at::Device(at::kCUDA) : at::Device(at::kCPU); }

WeightMap OnDevice(const WeightMap& weights, at::ScalarType dtype) {
  WeightMap out;
  for (const auto& [name, t] : weights) {
    out.emplace(name, t.is_floating_point() ? t.to(TestDevice(), dtype) : t.to(TestDevice()));
  }
  return out;
}

// The value of a load that must succeed; a failure ends the test (GoogleTest reports the
// exception) instead of aborting the binary.
template <typename T>
T Must(absl::StatusOr<T> value) {
  if (!value.ok()) throw std::runtime_error(std::string(value.status().ToString()));
  return *std::move(value);
}

at::Tensor Fixture(const std::string& file, const std::string& name) {
  return ReadFixtureTensor(FixturePath(file), name);
}

// Runs `run` (weights and inputs on the test device in the dtype given) three ways: strict
// float32, the precision the component serves in (weights in `serving`, float32 work on TF32
// tensor cores) and bf16 throughout. Checks float32 against `expected` and the serving precision
// against float32; the bf16-throughout figure is printed for the record (for components that
// serve in bf16 it is the serving figure).
void CheckComponent(const std::string& component, const std::string& variant,
                    const std::function<at::Tensor(at::ScalarType)>& run,
                    const at::Tensor& expected, at::ScalarType serving) {
  UseTensorCoresForFloat32(false);
  const at::Tensor f32 = run(at::kFloat).cpu().to(at::kFloat);
  UseTensorCoresForFloat32(true);
  const at::Tensor served = run(serving).cpu().to(at::kFloat);
  std::string bf16 = "-";
  try {
    bf16 = absl::StrFormat("%.3g", RelativeError(run(at::kBFloat16).cpu().to(at::kFloat), f32));
  } catch (const std::exception& e) {  // LibTorch 1.13's CPU conv_transpose1d has no bf16
    bf16 = "n/a";
  }
  UseTensorCoresForFloat32(false);
  ASSERT_EQ(f32.sizes(), expected.sizes()) << component;
  ASSERT_EQ(served.sizes(), expected.sizes()) << component;
  const double ref_err = RelativeError(f32, expected.to(at::kFloat));
  const double serve_err = RelativeError(served, f32);
  std::printf("serving %-14s %s %s: rel err vs fp32 %.3g (bf16 throughout %s); fp32 on %s vs "
              "reference %.3g\n",
              component.c_str(), variant.c_str(), serving == at::kFloat ? "fp32" : "bf16",
              serve_err, bf16.c_str(), TestDevice().str().c_str(), ref_err);
  EXPECT_LE(ref_err, kReferenceTolerance) << component << " " << variant;
  EXPECT_LE(serve_err, kServingTolerance) << component << " " << variant;
}

class Ltx2Bf16Test : public ::testing::Test {
 protected:
  void SetUp() override {
  }
};

TEST_F(Ltx2Bf16Test, Connectors) {
  for (const std::string& v : kVariants) {
    const std::string io = "ltx2-ref-a/" + v + "/connectors_io.safetensors";
    auto cpu = TextConnectors::Load(FixturePath("ltx2-ref-a/" + v + "/connectors"));
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    const at::Tensor hidden = Fixture(io, "in.text_encoder_hidden_states");
    const at::Tensor mask = Fixture(io, "in.attention_mask");
    for (const char* stream : {"video", "audio"}) {
      auto run = [&](at::ScalarType dtype) {
        auto model = Must(TextConnectors::Create((*cpu)->config(), OnDevice((*cpu)->weights(), dtype)));
        auto out = model->Forward(hidden.to(TestDevice(), dtype), mask.to(TestDevice()));
        return std::string(stream) == "video" ? out.video_text_embedding
                                              : out.audio_text_embedding;
      };
      CheckComponent(std::string("connectors.") + stream, v, run,
                     Fixture(io, std::string("out.") + stream + "_text_embedding"),
                     ServingDtype(Ltx2Component::kConnectors, at::kCUDA));
    }
  }
}

TEST_F(Ltx2Bf16Test, VideoVaeDecoder) {
  for (const std::string& v : kVariants) {
    const std::string io = "ltx2-ref-a/" + v + "/vae_decode_io.safetensors";
    const at::Tensor z = Fixture(io, "in.z");
    auto run = [&](at::ScalarType dtype) {
      auto vae = Must(Ltx2VideoDecoder::Load(FixturePath("ltx2-ref-a/" + v + "/vae"), dtype, TestDevice()));
      return vae->Decode(z.to(TestDevice(), dtype));
    };
    CheckComponent("video_vae", v, run, Fixture(io, "out.sample"),
                   ServingDtype(Ltx2Component::kVae, at::kCUDA));
  }
}

TEST_F(Ltx2Bf16Test, AudioVaeDecoder) {
  for (const std::string& v : kVariants) {
    const std::string io = "ltx2-ref-a/" + v + "/audio_vae_decode_io.safetensors";
    const at::Tensor z = Fixture(io, "in.z");
    auto run = [&](at::ScalarType dtype) {
      auto vae = Must(AudioVaeDecoder::Load(FixturePath("ltx2-ref-a/" + v + "/audio_vae"), dtype, TestDevice()));
      return vae->Decode(z.to(TestDevice(), dtype));
    };
    CheckComponent("audio_vae", v, run, Fixture(io, "out.mel"),
                   ServingDtype(Ltx2Component::kAudioVae, at::kCUDA));
  }
}

// LTX2VocoderWithBWE (2.3) runs in float32 whatever dtype it is loaded with; the mel input
// still arrives in the serving dtype.
TEST_F(Ltx2Bf16Test, Vocoder) {
  for (const std::string& v : kVariants) {
    const std::string io = "ltx2-ref-a/" + v + "/vocoder_io.safetensors";
    const at::Tensor mel = Fixture(io, "in.mel");
    auto run = [&](at::ScalarType dtype) {
      auto voc = Must(Vocoder::Load(FixturePath("ltx2-ref-a/" + v + "/vocoder"), dtype, TestDevice()));
      return voc->Run(mel.to(TestDevice(), dtype));
    };
    CheckComponent("vocoder", v, run, Fixture(io, "out.waveform"),
                   ServingDtype(Ltx2Component::kVocoder, at::kCUDA));
  }
}

TEST_F(Ltx2Bf16Test, LatentUpsampler) {
  for (const std::string& v : kVariants) {
    const std::string set = "ltx2-upsampler-ref-a/";
    const std::string io = set + "upsampler_" + v + "_io.safetensors";
    const at::Tensor latents = Fixture(io, "latents_raw");
    auto run = [&](at::ScalarType dtype) {
      auto up = Must(Ltx2LatentUpsampler::Load(FixturePath(set + "latent_upsampler_" + v), dtype,
                                          TestDevice()));
      return up->Forward(latents.to(TestDevice(), dtype));
    };
    CheckComponent("upsampler", v, run, Fixture(io, "forward.out"),
                   ServingDtype(Ltx2Component::kLatentUpsampler, at::kCUDA));
  }
}

// All hidden states (embeddings + every layer), stacked, on the fixture's left-padded batch.
TEST_F(Ltx2Bf16Test, Gemma3) {
  const std::string io = "gemma3-ref-a/gemma3_io.safetensors";
  auto cpu = Gemma3TextModel::Load(FixturePath("gemma3-ref-a/gemma3_text_model"));
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const at::Tensor ids = Fixture(io, "in.input_ids");
  const at::Tensor mask = Fixture(io, "in.attention_mask");
  // Padded positions are excluded: the reference's padded query rows are not a contract.
  const at::Tensor keep = mask.to(at::kBool).unsqueeze(0).unsqueeze(-1);
  auto run = [&](at::ScalarType dtype) {
    auto model = Must(Gemma3TextModel::Create((*cpu)->config(), OnDevice((*cpu)->weights(), dtype)));
    const std::vector<at::Tensor> hidden =
        model->Forward(ids.to(TestDevice()), mask.to(TestDevice()));
    return at::stack(hidden).cpu().to(at::kFloat).masked_fill(keep.logical_not(), 0);
  };
  const at::Tensor expected = Fixture(io, "out.hidden_states").masked_fill(keep.logical_not(), 0);
  CheckComponent("gemma3", "text", run, expected,
                   ServingDtype(Ltx2Component::kTextEncoder, at::kCUDA));
}

}  // namespace
}  // namespace diffmesh::models::ltx2
