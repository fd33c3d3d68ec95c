// End-to-end, LTX-2: `diffmesh up --model ltx2-tiny` (encoder, denoise, orchestrator on loopback)
// and `diffmesh generate --model ltx2-tiny` in one process give the same MP4, which an
// independent reader (FFmpeg through PyAV) decodes to the requested frames and soundtrack.
#include <cmath>
#include <fstream>
#include <iterator>
#include <set>
#include <utility>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "diffmesh/client.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace diffmesh {
namespace {

using testing::Binary;
using testing::Process;
using testing::ReadFile;

// Prints "frames width height fps sample_rate channels audio_seconds video_seconds" for an MP4.
constexpr char kProbe[] = R"(
import sys, av
c = av.open(sys.argv[1])
v = c.streams.video[0]
frames = sum(1 for _ in c.decode(video=0))
vdur = float(v.duration * v.time_base) if v.duration else 0.0
c = av.open(sys.argv[1])
a = c.streams.audio[0]
samples = sum(f.samples for f in c.decode(audio=0))
rate = a.codec_context.sample_rate
print(frames, v.codec_context.width, v.codec_context.height, float(v.average_rate), rate,
      a.codec_context.channels, samples / rate, vdur)
)";

class Ltx2MeshTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    base_port_ = testing::FreePorts(14);
    ASSERT_GT(base_port_, 0);
    log_ = absl::StrCat(::testing::TempDir(), "/ltx2_mesh_up.log");
    mesh_ = new Process(
        {Binary("diffmesh"), "up", "--model=ltx2-tiny", absl::StrCat("--base-port=", base_port_)},
        log_);
    sdk::ClientOptions o;
    o.address = absl::StrCat("127.0.0.1:", base_port_);
    client_ = sdk::Client::Create(o)->release();
    absl::Status s = client_->WaitUntilServing(absl::Seconds(120));
    ASSERT_TRUE(s.ok()) << s << "\n" << ReadFile(log_);
  }
  static void TearDownTestSuite() {
    delete client_;
    delete mesh_;
  }

  static std::vector<std::string> GenerateArgs(const std::string& output) {
    return {Binary("diffmesh"), "generate",
            "--model",          "ltx2-tiny",
            "--prompt",         "waves breaking on a rocky shore",
            "--seed",           "7",
            "--steps",          "3",
            "--width",          "96",
            "--num-frames",     "17",
            "--output",         output};
  }

  static int base_port_;
  static std::string log_;
  static Process* mesh_;
  static sdk::Client* client_;
};
int Ltx2MeshTest::base_port_ = 0;
std::string Ltx2MeshTest::log_;
Process* Ltx2MeshTest::mesh_ = nullptr;
sdk::Client* Ltx2MeshTest::client_ = nullptr;

TEST_F(Ltx2MeshTest, ProgressPerStageThroughTheApi) {
  v1::GenerateRequest r;
  r.set_model("ltx2-tiny");
  r.set_prompt("a bell ringing");
  r.set_seed(3);
  r.set_steps(2);
  std::vector<v1::GenerateEvent> events;
  auto result = client_->Generate(r, [&](const v1::GenerateEvent& e) { events.push_back(e); });
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << ReadFile(log_);
  ASSERT_EQ(result->outputs_size(), 1);
  const v1::OutputInfo& info = result->outputs(0).info();
  EXPECT_EQ(info.kind(), v1::OUTPUT_KIND_VIDEO);
  EXPECT_EQ(info.mime_type(), "video/mp4");
  EXPECT_EQ(info.frames(), 9);  // the model's default
  int steps = 0, encoder_done = 0;
  for (const auto& e : events) {
    steps += e.has_progress() && e.progress().stage() == "denoise";
    encoder_done += e.has_stage() && e.stage().stage() == "encoder" &&
                    e.stage().kind() == v1::StageEvent::KIND_FINISHED;
  }
  EXPECT_EQ(steps, 2);
  EXPECT_EQ(encoder_done, 1);
}

TEST_F(Ltx2MeshTest, MeshAndEmbeddedGiveTheSamePlayableMp4WithSound) {
  const std::string dir = ::testing::TempDir();
  const std::string mesh_mp4 = dir + "/ltx2_mesh.mp4", embedded_mp4 = dir + "/ltx2_embedded.mp4";
  std::string log;
  std::vector<std::string> mesh_args = GenerateArgs(mesh_mp4);
  mesh_args.push_back(absl::StrCat("--server=127.0.0.1:", base_port_));
  ASSERT_EQ(testing::RunCommand(mesh_args, &log), 0) << log << "\n" << ReadFile(log_);
  ASSERT_EQ(testing::RunCommand(GenerateArgs(embedded_mp4), &log), 0) << log;
  const std::string bytes = ReadFile(mesh_mp4);
  ASSERT_GT(bytes.size(), 100u);
  EXPECT_EQ(ReadFile(embedded_mp4), bytes) << "embedded and mesh outputs differ";

  const std::string probe = dir + "/ltx2_probe.py";
  std::ofstream(probe) << kProbe;
  std::string out;
  ASSERT_EQ(testing::RunCommand({"/usr/bin/python3", probe, mesh_mp4}, &out), 0) << out;
  std::vector<std::string> f = absl::StrSplit(absl::StripAsciiWhitespace(out), ' ');
  ASSERT_EQ(f.size(), 8u) << out;
  std::vector<double> v(8);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(absl::SimpleAtod(f[i], &v[i])) << out;
  EXPECT_EQ(v[0], 17) << "frames";
  EXPECT_EQ(v[1], 96) << "width";
  EXPECT_EQ(v[2], 64) << "height";
  EXPECT_NEAR(v[3], 24, 1e-6) << "frame rate";
  EXPECT_EQ(v[4], 48000) << "audio sample rate (the tiny model's BWE vocoder)";
  EXPECT_EQ(v[5], 2) << "audio channels";
  // 17 frames at 24 fps; the soundtrack covers the clip within an AAC frame and a latent frame.
  EXPECT_NEAR(v[7], 17.0 / 24, 1.0 / 24) << "video duration";
  EXPECT_NEAR(v[6], 17.0 / 24, 8.0 / 24) << "audio duration";
}

// The two-stage graph (encoder → denoise at half size → upsample → denoise → decode) over gRPC,
// with the decode stage on the denoise service beside rank 0 and, through a second
// orchestrator in front of the same stages, on a --role decode service of its own: the same MP4.
TEST(Ltx2TwoStageMeshTest, DecodingApartFromTheGroupGivesTheSameClip) {
  const int base = testing::FreePorts(6);
  ASSERT_GT(base, 0);
  auto addr = [&](int i) { return absl::StrCat("127.0.0.1:", base + i); };
  std::ifstream in(DIFFMESH_LTX2_TWO_STAGE_CONFIG);
  ASSERT_TRUE(in.good());
  const std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Services: encoder at +2, denoise at +3, decode at +4; orchestrators at +0 and +1.
  std::string beside = absl::StrReplaceAll(
      config, {{"\"127.0.0.1:50053\"", absl::StrCat("\"", addr(2), "\"")},
               {"\"127.0.0.1:50054\"", absl::StrCat("\"", addr(3), "\"")}});
  ASSERT_NE(beside, config);
  std::string apart = absl::StrReplaceAll(
      beside, {{"\"services\": {", absl::StrCat("\"services\": {\"decode\": \"", addr(4), "\", ")},
               {"{\"name\": \"vae_decode\", \"kind\": \"decode\", \"service\": \"denoise\"",
                "{\"name\": \"vae_decode\", \"kind\": \"decode\", \"service\": \"decode\""}});
  ASSERT_NE(apart.find("\"service\": \"decode\""), std::string::npos);
  const std::string dir = ::testing::TempDir();
  for (auto [name, text] : {std::pair{"beside.json", &beside}, std::pair{"apart.json", &apart}}) {
    std::ofstream(dir + "/" + name) << *text;
  }
  const std::string log = dir + "/ltx2_two_stage_mesh";
  auto port = [&](int i) { return absl::StrCat("--port=", base + i); };
  Process encoder({Binary("encoder"), "--model=ltx2-tiny", port(2)}, log + ".encoder");
  Process denoise({Binary("denoise"), "--model=ltx2-tiny", port(3),
                   absl::StrCat("--master_port=", base + 5)},
                  log + ".denoise");
  Process decode({Binary("denoise"), "--model=ltx2-tiny", "--role=decode", port(4)},
                 log + ".decode");
  Process orch_beside({Binary("orchestrator"), "--host=127.0.0.1", port(0),
                       "--pipeline=" + dir + "/beside.json"},
                      log + ".orchestrator0");
  Process orch_apart({Binary("orchestrator"), "--host=127.0.0.1", port(1),
                      "--pipeline=" + dir + "/apart.json"},
                     log + ".orchestrator1");
  std::vector<std::string> clips;
  for (int i : {0, 1}) {
    sdk::ClientOptions o;
    o.address = addr(i);
    auto client = sdk::Client::Create(o);
    ASSERT_TRUE(client.ok()) << client.status();
    absl::Status up = (*client)->WaitUntilServing(absl::Seconds(120));
    ASSERT_TRUE(up.ok()) << up << "\n"
                         << ReadFile(log + ".orchestrator" + std::to_string(i)) << "\n"
                         << ReadFile(log + ".decode");
    v1::GenerateRequest r;
    r.set_model("ltx2-tiny");
    r.set_prompt("waves breaking on a rocky shore");
    r.set_seed(11);
    r.set_steps(2);
    r.set_width(128);
    r.set_height(64);
    r.set_num_frames(9);
    std::set<std::string> stages;
    auto result = (*client)->Generate(r, [&](const v1::GenerateEvent& e) {
      if (e.has_progress()) stages.insert(e.progress().stage());
      if (e.has_stage()) stages.insert(e.stage().stage());
    });
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(stages, (std::set<std::string>{"encoder", "denoise_half", "upsample",
                                             "denoise_full", "vae_decode"}));
    ASSERT_EQ(result->outputs_size(), 1);
    EXPECT_EQ(result->outputs(0).info().mime_type(), "video/mp4");
    EXPECT_EQ(result->outputs(0).info().width(), 128);
    EXPECT_EQ(result->outputs(0).info().frames(), 9);
    clips.push_back(result->outputs(0).data());
  }
  EXPECT_EQ(clips[0], clips[1]);
  // The second orchestrator's decode stage runs on the decode service alone: without it that
  // orchestrator fails, naming the stage, while the first one still serves.
  decode.Stop();
  for (int i : {1, 0}) {
    sdk::ClientOptions o;
    o.address = addr(i);
    auto client = sdk::Client::Create(o);
    ASSERT_TRUE(client.ok());
    v1::GenerateRequest r;
    r.set_model("ltx2-tiny");
    r.set_prompt("a lighthouse");
    r.set_steps(1);  // one step of random weights overflows the vocoder: silence in the MP4
    r.set_width(64);
    r.set_height(64);
    r.set_num_frames(9);
    auto result = (*client)->Generate(r);
    EXPECT_EQ(result.ok(), i == 0) << i << ": " << result.status();
  }
}

// `diffmesh up --pipeline FILE` runs the two-stage graph of the file on the stages it starts,
// loading the file's default model.
TEST(Ltx2TwoStageMeshTest, UpRunsThePipelineFile) {
  const int base = testing::FreePorts(14);
  ASSERT_GT(base, 0);
  const std::string log = ::testing::TempDir() + "/ltx2_up_pipeline.log";
  Process mesh({Binary("diffmesh"), "up", std::string("--pipeline=") + DIFFMESH_LTX2_TWO_STAGE_CONFIG,
                absl::StrCat("--base-port=", base)},
               log);
  sdk::ClientOptions o;
  o.address = absl::StrCat("127.0.0.1:", base);
  auto client = sdk::Client::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::Status up = (*client)->WaitUntilServing(absl::Seconds(120));
  ASSERT_TRUE(up.ok()) << up << "\n" << ReadFile(log);
  v1::GenerateRequest r;
  r.set_prompt("waves breaking on a rocky shore");  // the file's default model
  r.set_seed(11);
  r.set_steps(2);
  r.set_width(64);
  r.set_height(64);
  r.set_num_frames(9);
  std::set<std::string> stages;
  auto result = (*client)->Generate(r, [&](const v1::GenerateEvent& e) {
    if (e.has_stage()) stages.insert(e.stage().stage());
  });
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << ReadFile(log);
  EXPECT_EQ(stages, (std::set<std::string>{"encoder", "denoise_half", "upsample", "denoise_full",
                                           "vae_decode"}));
  EXPECT_EQ(result->metadata().request().model(), "ltx2-tiny");
}

}  // namespace
}  // namespace diffmesh
