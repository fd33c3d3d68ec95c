#include "common/safetensors/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "common/file/file.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace diffmesh {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Headers list one small entry per tensor: megabytes for the largest checkpoints. The reference
// implementation refuses more than 100 MB too.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Indexes list one file name per tensor: megabytes for the largest models, not more.
constexpr size_t kMaxIndexBytes = size_t{64} << 20;

absl::Status Corrupt(const std::string& path, const std::string& why) {
  return absl::DataLossError(absl::StrCat("safetensors file ", path, ": ", why));
}

// A header that contradicts itself (rather than a file cut short).
absl::Status Invalid(const std::string& path, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file ", path, ": ", why));
}

// Parses the JSON header, rejecting a tensor name given twice (a JSON object would silently
// keep the last one, so the two readers of one file could disagree on its contents).
absl::StatusOr<json> ParseHeader(const std::string& path, const uint8_t* begin, size_t size) {
  std::set<std::string> names;
  std::string duplicate;
  json::parser_callback_t callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && duplicate.empty()) {
      const std::string& name = parsed.get_ref<const std::string&>();
      if (!names.insert(name).second) duplicate = name;
    }
    return true;
  };
  json header = json::parse(begin, begin + size, callback, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return Corrupt(path, "header is not JSON");
  if (!duplicate.empty()) {
    return Invalid(path, absl::StrCat("tensor '", duplicate, "' is listed twice in the header"));
  }
  return header;
}

// One tensor's bytes, [begin, end) relative to the start of the data.
struct Extent {
  uint64_t begin;
  uint64_t end;
  const std::string* name;
  TensorView* view;
};

// The safetensors layout: the tensors tile the data exactly, without overlaps or holes, and
// the last one ends at the end of the file. A header whose tiling is perfect but longer than
// the file is a truncated file (DATA_LOSS); any other disagreement is INVALID_ARGUMENT.
absl::Status CheckLayout(const std::string& path, std::vector<Extent>& extents, size_t data_size) {
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const std::string* previous = nullptr;
  for (const Extent& x : extents) {
    if (x.begin < expected) {
      return Invalid(path, absl::StrCat("tensor '", *x.name, "' (bytes ", x.begin, "..", x.end,
                                        ") overlaps tensor '", *previous, "' (ending at ",
                                        expected, ")"));
    }
    if (x.begin > expected) {
      return Invalid(path, absl::StrCat("tensor '", *x.name, "' starts at byte ", x.begin,
                                        ", leaving a gap after byte ", expected,
                                        " that no tensor covers"));
    }
    expected = x.end;
    previous = x.name;
  }
  if (expected > data_size) {
    for (const Extent& x : extents) {
      if (x.end > data_size) {
        return Corrupt(path, absl::StrCat("tensor '", *x.name, "' lies past the end of the file (",
                                          x.end, " > ", data_size, " data bytes; truncated?)"));
      }
    }
  }
  if (expected < data_size) {
    return Invalid(path, absl::StrCat(data_size - expected, " bytes after the last tensor",
                                      previous ? absl::StrCat(" '", *previous, "'") : "",
                                      " belong to no tensor"));
  }
  return absl::OkStatus();
}

// Folders a shard of the index at `index_path` may resolve into: the index's own folder and,
// inside a Hugging Face cache (<models--org--name>/snapshots/<revision>/...), the model's cache
// folder, since the snapshot's files are symlinks to its blobs/.
std::vector<fs::path> ShardRoots(const fs::path& index_path) {
  std::vector<fs::path> roots;
  std::error_code ec;
  const fs::path folder = fs::absolute(index_path, ec).parent_path();
  fs::path root = fs::canonical(folder, ec);
  if (!ec) roots.push_back(root);
  for (fs::path p = folder; p.has_relative_path(); p = p.parent_path()) {
    if (p.filename() == "snapshots" &&
        absl::StartsWith(p.parent_path().filename().string(), "models--")) {
      root = fs::canonical(p.parent_path(), ec);
      if (!ec) roots.push_back(root);
      break;
    }
  }
  return roots;
}

// Whether `path` lies strictly below `root` (both canonical).
bool Inside(const fs::path& path, const fs::path& root) {
  auto p = path.begin();
  for (auto r = root.begin(); r != root.end(); ++r, ++p) {
    if (p == path.end() || *p != *r) return false;
  }
  return p != path.end();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ReadShardIndex(const std::string& index_path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileBounded(index_path, kMaxIndexBytes));
  json index = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
      !index["weight_map"].is_object()) {
    return absl::DataLossError(absl::StrCat("index ", index_path, " has no weight_map"));
  }
  const std::vector<fs::path> roots = ShardRoots(index_path);
  const fs::path folder = fs::path(index_path).parent_path();
  std::vector<std::string> shards;
  std::set<fs::path> seen;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("index ", index_path, ": tensor '", it.key(),
                                                     "' ", why));
    };
    if (!it->is_string()) return bad("maps to something other than a file name");
    const std::string& name = it->get_ref<const std::string&>();
    const fs::path relative(name);
    if (name.empty() || name.find('\0') != std::string::npos || relative.is_absolute() ||
        relative.has_root_name()) {
      return bad(absl::StrCat("maps to '", name, "', not a file name inside ", folder.string()));
    }
    for (const fs::path& part : relative) {
      if (part == "..") return bad(absl::StrCat("maps to '", name, "', outside ", folder.string()));
    }
    const fs::path shard = folder / relative;
    std::error_code ec;
    const fs::path resolved = fs::canonical(shard, ec);
    if (ec) {
      return absl::NotFoundError(absl::StrCat("index ", index_path, ": shard ", shard.string(),
                                              " of tensor '", it.key(), "': ", ec.message()));
    }
    bool inside = false;
    for (const fs::path& root : roots) inside = inside || Inside(resolved, root);
    if (!inside) {
      return bad(absl::StrCat("maps to '", name, "', a link to ", resolved.string(),
                              " outside the snapshot"));
    }
    if (seen.insert(resolved).second) shards.push_back(shard.string());
  }
  return shards;
}


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
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("safetensors file ", path, ": not a regular file"));
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
  if (header_len > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header of ", header_len, " bytes is over the limit of ",
                                      kMaxHeaderBytes, " (parsing it could exhaust memory)"));
  }
  ASSIGN_OR_RETURN(json header, ParseHeader(path, base + 8, header_len));
  const uint8_t* data = base + 8 + header_len;
  const size_t data_size = file->map_size_ - 8 - header_len;

  std::vector<Extent> extents;
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
    if (end < begin) {
      return Invalid(path, absl::StrCat("tensor '", it.key(), "' has data_offsets [", begin, ", ",
                                        end, "] that end before they begin"));
    }
    // NumElements caps n at 2^40, so the product cannot overflow.
    if (end - begin != static_cast<uint64_t>(*n) * DTypeSize(v.dtype)) {
      return Corrupt(path, absl::StrCat("tensor '", it.key(), "' byte size does not match its shape"));
    }
    v.nbytes = end - begin;
    v.file = &file->path_;
    auto entry = file->tensors_.emplace(it.key(), std::move(v)).first;
    extents.push_back({begin, end, &entry->first, &entry->second});
  }
  RETURN_IF_ERROR(CheckLayout(path, extents, data_size));
  // Only now, with every extent inside the data, may views point into it.
  for (const Extent& x : extents) x.view->data = data + x.begin;
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
    ASSIGN_OR_RETURN(shards, ReadShardIndex(target));
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
