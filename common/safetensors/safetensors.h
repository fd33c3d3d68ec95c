// Reads safetensors checkpoints: one file or a sharded set with *.safetensors.index.json.
// Files are memory-mapped; tensor views point into the mapping and stay valid while the
// owning SafetensorsFile / Checkpoint lives. LibTorch-free.
#ifndef DIFFMESH_COMMON_SAFETENSORS_SAFETENSORS_H_
#define DIFFMESH_COMMON_SAFETENSORS_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor/dtype.h"

namespace diffmesh {

struct TensorView {
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // little-endian elements, row-major
  size_t nbytes = 0;
  const std::string* file = nullptr;  // the file it lives in, for error messages
};

class SafetensorsFile {
 public:
  // Maps `path` and parses its header; a truncated or corrupt file is an error naming it.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a component directory or file: `path` is a .safetensors file, a
// *.safetensors.index.json, or a directory holding exactly one of
// {model,diffusion_pytorch_model}.safetensors[.index.json].
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& path);

  // nullptr when absent.
  const TensorView* Find(const std::string& name) const;
  const std::map<std::string, const TensorView*>& tensors() const { return index_; }
  std::vector<std::string> files() const;

 private:
  Checkpoint() = default;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// The shard files of a sharded checkpoint's index (*.safetensors.index.json, its weight_map),
// each once, in the order first named. Every shard name is a relative path inside the index's
// folder: an absolute path, a ".." component or a symlink that resolves outside the folder (or,
// in a Hugging Face cache, outside the model's cache folder) is INVALID_ARGUMENT naming the
// index and the tensor; a missing shard is NOT_FOUND. The index itself is read with a size bound.
absl::StatusOr<std::vector<std::string>> ReadShardIndex(const std::string& index_path);

// Writes tensors to `path` in safetensors format (used by snapshot writers and tests).
struct OwnedTensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, OwnedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_SAFETENSORS_SAFETENSORS_H_
