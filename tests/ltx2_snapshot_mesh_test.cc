// End-to-end, LTX-2 from a snapshot: `diffmesh-snapshot write --model ltx2-tiny` writes an
// LTX2Pipeline snapshot (sharded like the release) with the built-in model's weights; serving it
// with `diffmesh generate --model-dir` (embedded) and `diffmesh up --model-dir` (the mesh) must
// give the built-in model's exact MP4 for the same request. Broken snapshots fail before any
// work, naming the tensor and the file.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "diffmesh/client.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace diffmesh {
namespace {

namespace fs = std::filesystem;
using testing::Binary;
using testing::Process;
using testing::ReadFile;

int ExitCode(int wait_status) { return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1; }

class Ltx2SnapshotMeshTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         absl::StrCat("diffmesh_ltx2_snapshot_mesh_test_", ::getpid()));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    std::string log;
    const std::string tool = testing::BinaryDir() + "/models/glm_image/tools/diffmesh-snapshot";
    int status = testing::RunCommand({tool, "write", "--model", "ltx2-tiny", Snapshot()}, &log);
    ASSERT_EQ(ExitCode(status), 0) << log;
    status = testing::RunCommand({tool, "check", Snapshot()}, &log);
    ASSERT_EQ(ExitCode(status), 0) << log;
    ASSERT_NE(log.find("LTX2Pipeline"), std::string::npos) << log;
    // The built-in model's clip: the reference both snapshot paths must reproduce.
    status = testing::RunCommand(Generate({"--model", "ltx2-tiny", "--output", Out("builtin.mp4")}),
                                 &log);
    ASSERT_EQ(ExitCode(status), 0) << log;
    builtin_mp4_ = new std::string(ReadFile(Out("builtin.mp4")));
    ASSERT_GT(builtin_mp4_->size(), 100u);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete builtin_mp4_;
  }

  // Named apart from the built-in model: requests show which model they reach.
  static std::string Snapshot() { return (*root_ / "ltx2-snap").string(); }
  static std::string Out(const std::string& name) { return (*root_ / name).string(); }
  // Every size and step given: the snapshot's defaults are the released pipeline's (768 × 512,
  // 121 frames, 30 steps); its guidance defaults equal the built-in model's.
  static std::vector<std::string> Generate(std::vector<std::string> extra) {
    std::vector<std::string> argv = {
        Binary("diffmesh"), "generate", "--prompt",     "rain on a tin roof",
        "--seed",           "11",       "--steps",      "2",
        "--height",         "64",       "--width",      "96",
        "--num-frames",     "9",        "--frame-rate", "24"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }
  // A copy of the snapshot with `file` (relative) rewritten by replacing `from` with `to`.
  static std::string BrokenCopy(const std::string& name, const std::string& file,
                                const std::string& from, const std::string& to) {
    const fs::path dir = *root_ / name;
    fs::remove_all(dir);
    fs::copy(Snapshot(), dir, fs::copy_options::recursive);
    const std::string text = ReadFile((dir / file).string());
    EXPECT_NE(text.find(from), std::string::npos) << file;
    std::ofstream((dir / file).string(), std::ios::trunc)
        << absl::StrReplaceAll(text, {{from, to}});
    return dir.string();
  }

  static fs::path* root_;
  static std::string* builtin_mp4_;
};
fs::path* Ltx2SnapshotMeshTest::root_ = nullptr;
std::string* Ltx2SnapshotMeshTest::builtin_mp4_ = nullptr;

TEST_F(Ltx2SnapshotMeshTest, EmbeddedGenerateServesTheSnapshot) {
  std::string log;
  const int status = testing::RunCommand(
      Generate({"--model-dir", Snapshot(), "--output", Out("embedded.mp4")}), &log);
  ASSERT_EQ(ExitCode(status), 0) << log;
  EXPECT_EQ(ReadFile(Out("embedded.mp4")), *builtin_mp4_)
      << "the snapshot's clip differs from the built-in model's";
}

TEST_F(Ltx2SnapshotMeshTest, MeshUpServesTheSnapshotWithItsOwnLimits) {
  const int base_port = testing::FreePorts(14);
  ASSERT_GT(base_port, 0);
  const std::string log = Out("up.log");
  Process mesh({Binary("diffmesh"), "up", absl::StrCat("--base-port=", base_port), "--model-dir",
                Snapshot()},
               log);
  sdk::ClientOptions o;
  o.address = absl::StrCat("127.0.0.1:", base_port);
  auto client = sdk::Client::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::Status serving = (*client)->WaitUntilServing(absl::Seconds(120));
  ASSERT_TRUE(serving.ok()) << serving << "\n" << ReadFile(log);

  auto models = (*client)->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 1);
  const v1::ModelInfo& m = models->models(0);
  EXPECT_EQ(m.name(), "ltx2-snap");
  EXPECT_EQ(models->default_model(), "ltx2-snap");
  EXPECT_EQ(m.kind(), v1::MODEL_KIND_VIDEO_WITH_AUDIO);
  // From the snapshot's configs: the tiny VAE's ×8 (patch 1) and 8k+1 frames.
  EXPECT_EQ(m.limits().size_granularity(), 8);
  EXPECT_EQ(m.limits().frames().multiple(), 8);
  EXPECT_EQ(m.limits().frames().offset(), 1);
  EXPECT_EQ(m.defaults().steps(), 30);  // LTX-2.3's
  EXPECT_EQ(m.stages_size(), 3);  // encoder → denoise → decode: no AR service started

  std::string out;
  std::vector<std::string> args =
      Generate({"--output", Out("mesh.mp4"), absl::StrCat("--server=127.0.0.1:", base_port)});
  ASSERT_EQ(ExitCode(testing::RunCommand(args, &out)), 0) << out << "\n" << ReadFile(log);
  EXPECT_EQ(ReadFile(Out("mesh.mp4")), *builtin_mp4_)
      << "the mesh's clip from the snapshot differs from the built-in model's";

  // The snapshot's frame rule, checked by the orchestrator before any stage runs.
  v1::GenerateRequest r;
  r.set_prompt("rain");
  r.set_num_frames(12);
  auto bad = (*client)->Generate(r);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  r.set_num_frames(9);
  r.set_model("ltx2-tiny");  // not what this mesh serves
  EXPECT_EQ((*client)->Generate(r).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(Ltx2SnapshotMeshTest, BrokenSnapshotsFailBeforeAnyWorkNamingTensorAndFile) {
  // A config with one more transformer block than the checkpoint holds: a missing tensor.
  const std::string missing =
      BrokenCopy("missing", "transformer/config.json", "\"num_layers\": 2", "\"num_layers\": 3");
  std::string log;
  int status =
      testing::RunCommand(Generate({"--model-dir", missing, "--output", Out("missing.mp4")}), &log);
  EXPECT_NE(ExitCode(status), 0) << log;
  EXPECT_NE(log.find("transformer_blocks.2."), std::string::npos) << log;
  EXPECT_NE(log.find("transformer/diffusion_pytorch_model-00001-of-00002.safetensors"),
            std::string::npos)
      << log;
  EXPECT_FALSE(fs::exists(Out("missing.mp4")));

  // Twice the connector's registers: one tensor of the wrong shape, in the encoder's component.
  const std::string shape = BrokenCopy("shape", "connectors/config.json",
                                       "\"video_connector_num_learnable_registers\": 4",
                                       "\"video_connector_num_learnable_registers\": 8");
  status =
      testing::RunCommand(Generate({"--model-dir", shape, "--output", Out("shape.mp4")}), &log);
  EXPECT_NE(ExitCode(status), 0) << log;
  EXPECT_NE(log.find("learnable_registers"), std::string::npos) << log;
  EXPECT_NE(log.find("connectors/diffusion_pytorch_model.safetensors"), std::string::npos) << log;
  EXPECT_NE(log.find("has shape"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(Out("shape.mp4")));

  // A stage service given the broken snapshot refuses to start, with the same reason.
  status = testing::RunCommand({Binary("encoder"), "--port=0", "--model_dir=" + shape}, &log);
  EXPECT_NE(ExitCode(status), 0) << log;
  EXPECT_NE(log.find("learnable_registers"), std::string::npos) << log;
}

}  // namespace
}  // namespace diffmesh
