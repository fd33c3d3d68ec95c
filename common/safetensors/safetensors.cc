#include "common/safetensors/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace diffmesh {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

absl::Status Corrupt(const std::string& path, const std::string& why) {
  return absl::DataLossError(absl::StrCat("safetensors file ", path, ": ", why));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path));
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->map_size_ = static_cast<size_t>(st.st_size);
  if (file->map_size_ < 8) {
    ::close(fd);
    return Corrupt(path, "shorter than its 8-byte header length");
  }
  void* map = ::mmap(nullptr, file->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return absl::InternalError(absl::StrCat("cannot mmap ", path));
  file->map_ = map;
  const auto* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > file->map_size_ - 8) return Corrupt(path, "header length past end of file");
  json header = json::parse(base + 8, base + 8 + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return Corrupt(path, "header is not JSON");
  const uint8_t* data = base + 8 + header_len;
  const size_t data_size = file->map_size_ - 8 - header_len;

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_object()) {
        for (auto m = it->begin(); m != it->end(); ++m) {
          if (m->is_string()) file->metadata_[m.key()] = m->get<std::string>();
        }
      }
      continue;
    }
    const json& e = *it;
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
        !e.contains("data_offsets") || !e["dtype"].is_string() || !e["shape"].is_array() ||
        !e["data_offsets"].is_array() || e["data_offsets"].size() != 2) {
      return Corrupt(path, absl::StrCat("bad entry for tensor '", it.key(), "'"));
    }
    auto dtype = DTypeFromName(e["dtype"].get<std::string>());
    if (!dtype) {
      return Corrupt(path, absl::StrCat("tensor '", it.key(), "' has unsupported dtype ",
                                        e["dtype"].get<std::string>()));
    }
    TensorView v;
    v.dtype = *dtype;
    for (const json& d : e["shape"]) {
      if (!d.is_number_integer()) return Corrupt(path, "non-integer shape");
      v.shape.push_back(d.get<int64_t>());
    }
    const json& off = e["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return Corrupt(path, absl::StrCat("tensor '", it.key(), "' has bad offsets"));
    }
    uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    auto n = NumElements(v.shape);
    if (!n.ok()) return Corrupt(path, absl::StrCat("tensor '", it.key(), "': ", n.status().message()));
    if (end < begin || end > data_size) {
      return Corrupt(path, absl::StrCat("tensor '", it.key(), "' lies past the end of the file (truncated?)"));
    }
    if (end - begin != static_cast<uint64_t>(*n) * DTypeSize(v.dtype)) {
      return Corrupt(path, absl::StrCat("tensor '", it.key(), "' byte size does not match its shape"));
    }
    v.data = data + begin;
    v.nbytes = end - begin;
    v.file = &file->path_;
    file->tensors_.emplace(it.key(), std::move(v));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& path) {
  std::error_code ec;
  std::string target = path;
  if (fs::is_directory(path, ec)) {
    std::vector<std::string> found;
    for (const char* name : {"model.safetensors.index.json",
                             "diffusion_pytorch_model.safetensors.index.json",
                             "model.safetensors", "diffusion_pytorch_model.safetensors"}) {
      if (fs::exists(fs::path(path) / name, ec)) found.push_back((fs::path(path) / name).string());
    }
    if (found.empty()) {
      return absl::NotFoundError(absl::StrCat("no safetensors weights in directory ", path));
    }
    target = found.front();  // an index wins over a single file
  } else if (!fs::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", path, " does not exist"));
  }

  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  std::vector<std::string> shards;
  if (absl::EndsWith(target, ".index.json")) {
    std::ifstream in(target);
    json index = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::DataLossError(absl::StrCat("index ", target, " has no weight_map"));
    }
    std::set<std::string> seen;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it->is_string()) return absl::DataLossError(absl::StrCat("index ", target, ": bad entry"));
      std::string shard = (fs::path(target).parent_path() / it->get<std::string>()).string();
      if (seen.insert(shard).second) shards.push_back(shard);
    }
  } else {
    shards.push_back(target);
  }
  for (const std::string& shard : shards) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(shard));
    for (const auto& [name, view] : file->tensors()) {
      if (!ckpt->index_.emplace(name, &view).second) {
        return absl::DataLossError(absl::StrCat("tensor '", name, "' appears in more than one shard (",
                                                shard, ")"));
      }
    }
    ckpt->files_.push_back(std::move(file));
  }
  return ckpt;
}

const TensorView* Checkpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::files() const {
  std::vector<std::string> out;
  for (const auto& f : files_) out.push_back(f->path());
  return out;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, OwnedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    ASSIGN_OR_RETURN(int64_t n, NumElements(t.shape));
    if (t.bytes.size() != static_cast<size_t>(n) * DTypeSize(t.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' bytes do not match shape"));
    }
    header[name] = {{"dtype", std::string(DTypeName(t.dtype))},
                    {"shape", t.shape},
                    {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  uint64_t len = h.size();
  char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out.write(len_bytes, 8);
  out.write(h.data(), h.size());
  for (const auto& [name, t] : tensors) out.write(t.bytes.data(), t.bytes.size());
  if (!out) return absl::DataLossError(absl::StrCat("short write to ", path));
  return absl::OkStatus();
}

}  // namespace diffmesh
