// End-to-end: a GlmImagePipeline snapshot written by diffmesh-snapshot (sharded like the release)
// served by `diffmesh generate --model-dir` and by `diffmesh up --model-dir`. The snapshot holds
// the built-in tiny model's weights, so both must give the built-in model's exact PNG.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
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

class SnapshotMeshTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         absl::StrCat("diffmesh_snapshot_mesh_test_", ::getpid()));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    std::string log;
    const std::string tool = testing::BinaryDir() + "/models/glm_image/tools/diffmesh-snapshot";
    int status = testing::RunCommand({tool, "write", Snapshot()}, &log);
    ASSERT_EQ(ExitCode(status), 0) << log;
    status = testing::RunCommand({tool, "write", SingleFileSnapshot(), "--single-file"}, &log);
    ASSERT_EQ(ExitCode(status), 0) << log;
    // The built-in model's image: the reference both snapshot paths must reproduce.
    status_ = testing::RunCommand(Generate({"--output", Out("builtin.png")}), &log);
    ASSERT_EQ(ExitCode(status_), 0) << log;
    builtin_png_ = new std::string(ReadFile(Out("builtin.png")));
    ASSERT_GT(builtin_png_->size(), 100u);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete builtin_png_;
  }

  // Named apart from the built-in model: requests show which model they reach.
  static std::string Snapshot() { return (*root_ / "glm-snap").string(); }
  // The same weights in one safetensors file per component.
  static std::string SingleFileSnapshot() { return (*root_ / "glm-snap-single").string(); }
  static std::string Out(const std::string& name) { return (*root_ / name).string(); }
  static std::vector<std::string> Generate(std::vector<std::string> extra) {
    std::vector<std::string> argv = {Binary("diffmesh"), "generate", "--prompt",
                                     "a sign that says \"snapshot\"", "--seed", "5", "--steps",
                                     "3", "--height", "256", "--width", "256"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  static fs::path* root_;
  static std::string* builtin_png_;
  static int status_;
};
fs::path* SnapshotMeshTest::root_ = nullptr;
std::string* SnapshotMeshTest::builtin_png_ = nullptr;
int SnapshotMeshTest::status_ = 0;

TEST_F(SnapshotMeshTest, EmbeddedGenerateServesTheSnapshot) {
  std::string log;
  const int status =
      testing::RunCommand(Generate({"--model-dir", Snapshot(), "--output", Out("emb.png")}), &log);
  ASSERT_EQ(ExitCode(status), 0) << log;
  EXPECT_EQ(ReadFile(Out("emb.png")), *builtin_png_);
  ASSERT_TRUE(fs::exists(fs::path(SingleFileSnapshot()) / "transformer" /
                         "diffusion_pytorch_model.safetensors"));
  const int single = testing::RunCommand(
      Generate({"--model-dir", SingleFileSnapshot(), "--output", Out("single.png")}), &log);
  ASSERT_EQ(ExitCode(single), 0) << log;
  EXPECT_EQ(ReadFile(Out("single.png")), *builtin_png_) << "sharded and single-file differ";
}

TEST_F(SnapshotMeshTest, MeshUpServesTheSnapshotUnderItsName) {
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
  EXPECT_EQ(models->models(0).name(), "glm-snap");
  EXPECT_EQ(models->default_model(), "glm-snap");

  v1::GenerateRequest r;
  r.set_prompt("a sign that says \"snapshot\"");
  r.set_seed(5);
  r.set_steps(3);
  r.set_height(256);
  r.set_width(256);
  auto result = (*client)->Generate(r);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->outputs_size(), 1);
  EXPECT_EQ(result->outputs(0).data(), *builtin_png_);

  r.set_model("glm-image-tiny");  // not what this mesh serves
  EXPECT_EQ((*client)->Generate(r).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SnapshotMeshTest, BadSnapshotsFailBeforeAnyWorkWithTheFileNamed) {
  std::string log;
  int status = testing::RunCommand(
      Generate({"--model-dir", Out("no-such-dir"), "--output", Out("x.png")}), &log);
  EXPECT_EQ(ExitCode(status), 2) << log;
  EXPECT_NE(log.find("model_index.json"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(Out("x.png")));

  // A truncated shard of the DiT: the load names the file.
  const fs::path broken = *root_ / "broken";
  fs::copy(Snapshot(), broken, fs::copy_options::recursive);
  fs::path shard;
  for (const auto& e : fs::directory_iterator(broken / "transformer")) {
    if (e.path().extension() == ".safetensors") shard = e.path();
  }
  ASSERT_FALSE(shard.empty());
  fs::resize_file(shard, fs::file_size(shard) / 2);
  status = testing::RunCommand(
      Generate({"--model-dir", broken.string(), "--output", Out("y.png")}), &log);
  EXPECT_NE(ExitCode(status), 0) << log;
  EXPECT_NE(log.find(shard.filename().string()), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(Out("y.png")));
}

}  // namespace
}  // namespace diffmesh
