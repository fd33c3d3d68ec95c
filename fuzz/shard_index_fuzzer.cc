// Fuzzes the sharded-checkpoint index reader (ReadShardIndex, Checkpoint::Open): the input is the
// text of model.safetensors.index.json in a component folder that holds two shards, a
// subfolder, a symlink inside the folder and symlinks that lead out of it. Every shard it
// returns must resolve inside the folder.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/safetensors/safetensors.h"
#include "fuzz/fuzz_input.h"

namespace {

namespace fs = std::filesystem;

fs::path g_root;    // temporary folder, removed at exit
fs::path g_folder;  // g_root/snapshot/transformer
fs::path g_index;

void WriteShard(const fs::path& path, const std::string& name) {
  diffmesh::OwnedTensor t{diffmesh::DType::kFloat32, {2}, std::string(8, '\x3f')};
  if (!diffmesh::WriteSafetensors(path.string(), {{name, t}}).ok()) std::abort();
}

void RemoveRoot() {
  std::error_code ec;
  fs::remove_all(g_root, ec);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // In memory where the system has it: the index is rewritten for every input.
  std::string tmpl = fs::is_directory("/dev/shm") ? "/dev/shm/diffmesh_fuzz_index_XXXXXX"
                                                  : "/tmp/diffmesh_fuzz_index_XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) std::abort();
  g_root = tmpl;
  std::atexit(RemoveRoot);
  g_folder = g_root / "snapshot" / "transformer";
  fs::create_directories(g_folder / "sub");
  WriteShard(g_folder / "model-00001-of-00002.safetensors", "x");
  WriteShard(g_folder / "model-00002-of-00002.safetensors", "y");
  WriteShard(g_folder / "sub" / "model-sub.safetensors", "z");
  WriteShard(g_root / "snapshot" / "outside.safetensors", "w");
  fs::create_symlink("model-00001-of-00002.safetensors", g_folder / "link-in.safetensors");
  fs::create_symlink("../outside.safetensors", g_folder / "link-out.safetensors");
  fs::create_directory_symlink("..", g_folder / "up");
  g_index = g_folder / "model.safetensors.index.json";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  {
    std::ofstream out(g_index, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  const fs::path folder = fs::canonical(g_folder);
  auto shards = diffmesh::ReadShardIndex(g_index.string());
  if (shards.ok()) {
    for (const std::string& shard : *shards) {
      std::error_code ec;
      const fs::path resolved = fs::canonical(shard, ec);
      diffmesh::fuzz::Check(!ec, "returned a shard that does not exist");
      const fs::path rel = resolved.lexically_relative(folder);
      diffmesh::fuzz::Check(!rel.empty() && *rel.begin() != "..",
                            "returned a shard outside the index's folder");
    }
  }
  auto checkpoint = diffmesh::Checkpoint::Open(g_folder.string());
  if (checkpoint.ok()) {
    diffmesh::fuzz::Check((*checkpoint)->Find("w") == nullptr, "loaded a tensor from outside");
  }
  return 0;
}
