#include "models/glm_image/snapshot.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config/pipeline_config.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"

namespace diffmesh::models::glm_image {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr char kPipelineClass[] = "GlmImagePipeline";

const char* ComponentFolder(Component component) {
  switch (component) {
    case Component::kTransformer:
      return "transformer";
    case Component::kVae:
      return "vae";
    case Component::kTextEncoder:
      return "text_encoder";
    case Component::kVisionLanguageEncoder:
      return "vision_language_encoder";
  }
  return "";
}

// Same code, message prefixed with the file it is about.
absl::Status InFile(const absl::Status& status, const std::string& path) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(path, ": ", status.message()));
}


absl::Status WriteTextFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path.string()));
  out << text;
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("short write to ", path.string()));
  return absl::OkStatus();
}

absl::Status WriteJsonFile(const fs::path& path, const json& j) {
  return WriteTextFile(path, j.dump(2) + "\n");
}

// GPT-2's byte-level alphabet (bytes_to_unicode): printable Latin-1 bytes stand for
// themselves, the other 68 bytes for U+0100.. in byte order. Returns the UTF-8 spelling.
std::string ByteLevelChar(unsigned char b) {
  auto printable = [](int c) {
    return (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
  };
  uint32_t cp = b;
  if (!printable(b)) {
    int n = 0;
    for (int c = 0; c < b; ++c) n += printable(c) ? 0 : 1;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {  // cp < 0x800 here
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

// A special-token entry of tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> TokenContent(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) {
    return j["content"].get<std::string>();
  }
  return std::nullopt;
}

std::optional<std::string> ConfigToken(const json& config, const char* key) {
  if (config.contains(key)) {
    if (auto t = TokenContent(config[key])) return t;
  }
  // Named extra tokens: transformers 5 keeps them under model_specific_special_tokens, 4.x
  // under extra_special_tokens (a dict there; a plain list in 5).
  for (const char* group : {"model_specific_special_tokens", "extra_special_tokens"}) {
    if (config.contains(group) && config[group].is_object() && config[group].contains(key)) {
      return TokenContent(config[group][key]);
    }
  }
  return std::nullopt;
}

// Fills the AR prompt's token ids from processor/tokenizer.json and tokenizer_config.json.
absl::Status ReadArTokenizer(const fs::path& processor, GlmImageSpec& spec) {
  const fs::path tok_path = processor / "tokenizer.json";
  const fs::path cfg_path = processor / "tokenizer_config.json";
  ASSIGN_OR_RETURN(json tok, ReadJsonFile(tok_path));
  ASSIGN_OR_RETURN(json cfg, ReadJsonFile(cfg_path));
  if (!tok.contains("model") || !tok["model"].is_object() || !tok["model"].contains("vocab") ||
      !tok["model"]["vocab"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(tok_path.string(), ": no model.vocab"));
  }
  const json& model = tok["model"];
  const json& vocab = model["vocab"];
  std::map<std::string, int64_t> added;
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array()) {
    for (const json& t : tok["added_tokens"]) {
      if (t.is_object() && t.contains("id") && t["id"].is_number_integer() &&
          t.contains("content") && t["content"].is_string()) {
        added[t["content"].get<std::string>()] = t["id"].get<int64_t>();
      }
    }
  }
  auto id_of = [&](const std::string& token, const char* role) -> absl::StatusOr<int64_t> {
    if (auto it = added.find(token); it != added.end()) return it->second;
    if (vocab.contains(token) && vocab[token].is_number_integer()) {
      return vocab[token].get<int64_t>();
    }
    return absl::InvalidArgumentError(absl::StrCat(tok_path.string(), ": no token '", token, "' (",
                                                   role, " in ", cfg_path.string(), ")"));
  };
  ASSIGN_OR_RETURN(spec.tokenizer.grid_bos_id,
                   id_of(ConfigToken(cfg, "grid_bos_token").value_or("<sop>"), "grid_bos_token"));
  ASSIGN_OR_RETURN(spec.tokenizer.grid_eos_id,
                   id_of(ConfigToken(cfg, "grid_eos_token").value_or("<eop>"), "grid_eos_token"));
  if (auto bos = ConfigToken(cfg, "bos_token")) {
    ASSIGN_OR_RETURN(spec.tokenizer.bos_id, id_of(*bos, "bos_token"));
  } else {
    const json& text = spec.vision_language_encoder.value("text_config", json::object());
    if (!text.contains("bos_token_id") || !text["bos_token_id"].is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          cfg_path.string(), ": no bos_token, and the AR config has no text_config.bos_token_id"));
    }
    spec.tokenizer.bos_id = text["bos_token_id"].get<int64_t>();
  }
  // A plain byte vocabulary (what WriteSnapshot writes for small models) encodes a prompt as
  // byte_offset + b exactly; a real BPE vocabulary (merges) needs the BPE tokenizer.
  spec.ar_tokenizer_json = tok_path.string();
  spec.byte_tokens = false;
  const bool no_merges =
      !model.contains("merges") || (model["merges"].is_array() && model["merges"].empty());
  if (model.value("type", std::string()) == "BPE" && no_merges) {
    const std::string first = ByteLevelChar(0);
    if (vocab.contains(first) && vocab[first].is_number_integer()) {
      const int64_t offset = vocab[first].get<int64_t>();
      bool contiguous = true;
      for (int b = 0; b < 256 && contiguous; ++b) {
        const std::string c = ByteLevelChar(static_cast<unsigned char>(b));
        contiguous = vocab.contains(c) && vocab[c].is_number_integer() &&
                     vocab[c].get<int64_t>() == offset + b;
      }
      if (contiguous) {
        spec.tokenizer.byte_offset = offset;
        spec.byte_tokens = true;
      }
    }
  }
  return absl::OkStatus();
}

// Sampling as GlmImagePipeline runs the AR model: generate(do_sample=True) with the rest from
// generation_config.json, transformers' defaults (temperature 1, top_p 1, top_k 50) filling in.
absl::Status ReadSampling(const fs::path& path, ArSampling& sampling) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return absl::OkStatus();  // keep the served defaults
  ASSIGN_OR_RETURN(json g, ReadJsonFile(path));
  ArSampling s;
  s.temperature = 1.0f;
  s.top_p = 1.0f;
  s.top_k = 50;
  if (g.contains("temperature") && g["temperature"].is_number()) {
    s.temperature = g["temperature"].get<float>();
  }
  if (g.contains("top_p") && g["top_p"].is_number()) s.top_p = g["top_p"].get<float>();
  if (g.contains("top_k") && g["top_k"].is_number_integer()) s.top_k = g["top_k"].get<int64_t>();
  if (s.temperature < 0 || s.top_p <= 0 || s.top_p > 1 || s.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": bad sampling settings"));
  }
  sampling = s;
  return absl::OkStatus();
}

// The name the stages serve the snapshot under (the orchestrator's pipeline uses the same rule).
std::string SnapshotName(const json& model_index, const std::string& dir) {
  std::string name_or_path;
  if (model_index.contains("_name_or_path") && model_index["_name_or_path"].is_string()) {
    name_or_path = model_index["_name_or_path"].get<std::string>();
  }
  return SnapshotModelName(name_or_path, dir);
}

at::ScalarType ToScalarType(DType d) {
  switch (d) {
    case DType::kFloat32:
      return at::kFloat;
    case DType::kFloat16:
      return at::kHalf;
    case DType::kBFloat16:
      return at::kBFloat16;
    case DType::kFloat64:
      return at::kDouble;
    case DType::kInt64:
      return at::kLong;
    case DType::kInt32:
      return at::kInt;
    case DType::kInt16:
      return at::kShort;
    case DType::kInt8:
      return at::kChar;
    case DType::kUInt8:
      return at::kByte;
    case DType::kBool:
      return at::kBool;
  }
  return at::kFloat;
}

bool IsFloating(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16 ||
         d == DType::kFloat64;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// Where each parameter comes from, grouped by file, after every check.
struct LoadItem {
  const ParamSpec* spec;
  const TensorView* view;
  int split_dim;  // -1: whole
};
using LoadPlan = std::map<std::string, std::vector<LoadItem>>;  // file → its parameters

absl::StatusOr<LoadPlan> PlanLoad(const std::string& component_dir, const Checkpoint& checkpoint,
                                  const std::vector<ParamSpec>& specs,
                                  const WeightLoadOptions& options) {
  LoadPlan plan;
  std::set<std::string> known;  // checkpoint names that are not unexpected
  for (const auto& [name, alternatives] : options.aliases) {
    known.insert(alternatives.begin(), alternatives.end());
  }
  for (const ParamSpec& s : specs) {
    const TensorView* v = checkpoint.Find(s.name);
    if (v == nullptr) {
      auto it = options.aliases.find(s.name);
      if (it != options.aliases.end()) {
        for (const std::string& alt : it->second) {
          if ((v = checkpoint.Find(alt)) != nullptr) break;
        }
      }
    }
    if (v == nullptr) {
      return absl::NotFoundError(absl::StrCat("parameter '", s.name,
                                              "' is missing from the checkpoint in ", component_dir,
                                              " (", absl::StrJoin(checkpoint.files(), ", "), ")"));
    }
    known.insert(s.name);
    if (v->shape != s.shape) {
      return absl::InvalidArgumentError(absl::StrCat("parameter '", s.name, "' in ", *v->file,
                                                     " has shape ", ShapeString(v->shape),
                                                     ", expected ", ShapeString(s.shape)));
    }
    if (!IsFloating(v->dtype)) {
      return absl::InvalidArgumentError(absl::StrCat("parameter '", s.name, "' in ", *v->file,
                                                     " has dtype ", DTypeName(v->dtype),
                                                     ", expected a floating-point type"));
    }
    int dim = -1;
    if (options.tp_dim != nullptr && options.tp_size > 1) {
      dim = options.tp_dim(s.name);
      if (dim >= static_cast<int>(s.shape.size()) ||
          (dim >= 0 && s.shape[dim] % options.tp_size != 0)) {
        return absl::InvalidArgumentError(absl::StrCat("parameter '", s.name, "' ",
                                                       ShapeString(s.shape), " does not split ",
                                                       options.tp_size, " ways along dim ", dim));
      }
    }
    plan[*v->file].push_back({&s, v, dim});
  }
  for (const auto& [name, view] : checkpoint.tensors()) {
    if (known.count(name)) continue;
    bool ignored = false;
    for (const std::string& p : options.ignored_prefixes) {
      ignored = ignored || absl::StartsWith(name, p);
    }
    if (!ignored) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected parameter '", name, "' in ", *view->file));
    }
  }
  return plan;
}

// One parameter from the mapping: this rank's slice, in the target dtype, on the target device.
// The result never aliases the mapping.
at::Tensor ConvertTensor(const TensorView& view, int split_dim, const WeightLoadOptions& options) {
  const at::ScalarType from = ToScalarType(view.dtype);
  at::Tensor src;
  if (reinterpret_cast<uintptr_t>(view.data) % DTypeSize(view.dtype) == 0) {
    src =
        at::from_blob(const_cast<uint8_t*>(view.data), view.shape, at::TensorOptions().dtype(from));
  } else {
    src = ToTensor(view);  // an unaligned tensor (allowed by the format, never seen in practice)
  }
  if (split_dim >= 0) {
    const int64_t n = src.size(split_dim) / options.tp_size;
    src = src.narrow(split_dim, options.tp_rank * n, n);
  }
  const at::ScalarType to = at::isFloatingType(from) ? options.dtype : from;
  if (options.device.is_cpu()) {
    return src.to(to, /*non_blocking=*/false, /*copy=*/true).contiguous();
  }
  // A contiguous view goes to the device straight from the mapping; a column slice is gathered
  // on the host first (only the slice).
  return src.contiguous().to(options.device, to);
}

// Splits `specs` (in order) into at most `n` contiguous groups of about equal bytes, each
// non-empty.
std::vector<std::vector<ParamSpec>> SplitIntoShards(const std::vector<ParamSpec>& specs, int n,
                                                    size_t element_size) {
  auto bytes = [&](const ParamSpec& s) {
    int64_t e = 1;
    for (int64_t d : s.shape) e *= d;
    return static_cast<double>(e) * static_cast<double>(element_size);
  };
  double total = 0;
  for (const auto& s : specs) total += bytes(s);
  n = std::max(1, std::min<int>(n, static_cast<int>(specs.size())));
  std::vector<std::vector<ParamSpec>> shards(1);
  double acc = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const int s = static_cast<int>(shards.size()) - 1;
    const bool must_move = specs.size() - i <= static_cast<size_t>(n - 1 - s);
    if (!shards.back().empty() && s < n - 1 &&
        (acc + bytes(specs[i]) > total * (s + 1) / n || must_move)) {
      shards.emplace_back();
    }
    shards.back().push_back(specs[i]);
    acc += bytes(specs[i]);
  }
  return shards;
}

// Streams one safetensors file: the header from the specs' shapes, then each tensor generated
// (InitSeeded, per-name seeds) and converted on its own, so memory holds one tensor at a time.
absl::Status WriteSeededSafetensors(const fs::path& path, const std::vector<ParamSpec>& specs,
                                    uint64_t seed, DType dtype) {
  const size_t esize = DTypeSize(dtype);
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const ParamSpec& s : specs) {
    ASSIGN_OR_RETURN(int64_t n, NumElements(s.shape));
    const uint64_t nbytes = static_cast<uint64_t>(n) * esize;
    header[s.name] = {{"dtype", std::string(DTypeName(dtype))},
                      {"shape", s.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');  // data starts 8-aligned
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path.string()));
  char len[8];
  for (int i = 0; i < 8; ++i) {
    len[i] = static_cast<char>((static_cast<uint64_t>(h.size()) >> (8 * i)) & 0xff);
  }
  out.write(len, 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const ParamSpec& s : specs) {
    WeightMap one = InitSeeded({s}, seed);
    at::Tensor t = one.begin()->second.to(ToScalarType(dtype)).contiguous();
    out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  }
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("short write to ", path.string()));
  return absl::OkStatus();
}

// Writes a component's weights as `base`.safetensors, or as `shards` files
// `base`-0000k-of-0000n.safetensors with `base`.safetensors.index.json (transformers' and
// diffusers' sharding names). Earlier weight files of that name are removed first, so that a
// stale index cannot win over a new single file.
absl::Status WriteComponentWeights(const fs::path& folder, const std::string& base,
                                   const std::vector<ParamSpec>& specs, uint64_t seed, DType dtype,
                                   int shards) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    const std::string f = entry.path().filename().string();
    if (absl::StartsWith(f, base) && absl::StrContains(f, ".safetensors")) {
      fs::remove(entry.path(), ec);
    }
  }
  if (shards <= 1) {
    return WriteSeededSafetensors(folder / (base + ".safetensors"), specs, seed, dtype);
  }
  const auto groups = SplitIntoShards(specs, shards, DTypeSize(dtype));
  json weight_map = json::object();
  uint64_t total = 0;
  for (size_t k = 0; k < groups.size(); ++k) {
    char numbers[32];
    std::snprintf(numbers, sizeof(numbers), "-%05zu-of-%05zu", k + 1, groups.size());
    const std::string file = base + numbers + ".safetensors";
    RETURN_IF_ERROR(WriteSeededSafetensors(folder / file, groups[k], seed, dtype));
    for (const ParamSpec& s : groups[k]) {
      weight_map[s.name] = file;
      int64_t n = 1;
      for (int64_t d : s.shape) n *= d;
      total += static_cast<uint64_t>(n) * DTypeSize(dtype);
    }
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return WriteJsonFile(folder / (base + ".safetensors.index.json"), index);
}

std::string DitTokenName(int64_t id) { return absl::StrCat("<|dit_token_", id, "|>"); }

// The bos token's spelling: the release's bos is the image-start token <|dit_token_16384|>.
std::string BosTokenName(const GlmImageSpec& spec, const ArConfig& ar) {
  return spec.tokenizer.bos_id == ar.image_start_token_id ? DitTokenName(ar.image_start_token_id)
                                                          : std::string("<|begin_of_image|>");
}

absl::Status WriteProcessorExtras(const fs::path& folder);

// processor/tokenizer.json (a byte-level BPE vocabulary without merges, in the Hugging Face
// tokenizers format) and processor/tokenizer_config.json.
absl::Status WriteArTokenizer(const fs::path& folder, const GlmImageSpec& spec,
                              const std::string& copy_from) {
  ASSIGN_OR_RETURN(ArConfig ar, ArConfig::FromJson(spec.vision_language_encoder));
  if (!copy_from.empty()) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
      std::error_code ec;
      fs::copy_file(fs::path(copy_from) / name, folder / name,
                    fs::copy_options::overwrite_existing, ec);
      if (ec) {
        return absl::NotFoundError(absl::StrCat("tokenizer: cannot copy ",
                                                (fs::path(copy_from) / name).string(), ": ",
                                                ec.message()));
      }
    }
    return WriteProcessorExtras(folder);
  }
  const ArTokenizerSpec& t = spec.tokenizer;
  std::vector<std::pair<int64_t, std::string>> specials = {
      {t.grid_bos_id, "<sop>"},
      {t.grid_eos_id, "<eop>"},
      {t.bos_id, BosTokenName(spec, ar)},
      {ar.image_end_token_id, DitTokenName(ar.image_end_token_id)},
      {ar.image_token_id, "<|image|>"}};
  if (t.bos_id != ar.image_start_token_id) {
    specials.push_back({ar.image_start_token_id, DitTokenName(ar.image_start_token_id)});
  }
  std::set<int64_t> used;
  for (int b = 0; b < 256; ++b) used.insert(t.byte_offset + b);
  if (t.byte_offset < 0 || t.byte_offset + 256 > ar.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer: byte tokens ", t.byte_offset, "..",
                                                   t.byte_offset + 255,
                                                   " outside the vocabulary of ", ar.vocab_size));
  }
  for (const auto& [id, text] : specials) {
    if (id < 0 || id >= ar.vocab_size || !used.insert(id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer: id ", id, " of ", text, " is out of range or taken"));
    }
  }
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    vocab[ByteLevelChar(static_cast<unsigned char>(b))] = t.byte_offset + b;
  }
  json added = json::array();
  json added_decoder = json::object();
  std::sort(specials.begin(), specials.end());
  for (const auto& [id, text] : specials) {
    json entry = {{"id", id},        {"content", text}, {"single_word", false},
                  {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                  {"special", true}};
    added.push_back(entry);
    entry.erase("id");
    added_decoder[std::to_string(id)] = entry;
  }
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", true}};
  json tokenizer = {{"version", "1.0"},
                    {"truncation", nullptr},
                    {"padding", nullptr},
                    {"added_tokens", added},
                    {"normalizer", nullptr},
                    {"pre_tokenizer", byte_level},
                    {"post_processor", nullptr},
                    {"decoder", byte_level},
                    {"model",
                     {{"type", "BPE"},
                      {"dropout", nullptr},
                      {"unk_token", nullptr},
                      {"continuing_subword_prefix", nullptr},
                      {"end_of_word_suffix", nullptr},
                      {"fuse_unk", false},
                      {"byte_fallback", false},
                      {"ignore_merges", false},
                      {"vocab", vocab},
                      {"merges", json::array()}}}};
  RETURN_IF_ERROR(WriteJsonFile(folder / "tokenizer.json", tokenizer));
  json config = {
      {"tokenizer_class", "PreTrainedTokenizerFast"},
      {"processor_class", "GlmImageProcessor"},
      {"bos_token", BosTokenName(spec, ar)},
      {"eos_token", DitTokenName(ar.image_end_token_id)},
      {"clean_up_tokenization_spaces", false},
      {"model_max_length", t.max_prompt_tokens},
      // transformers 5 spelling of named extra tokens (tokenizer.grid_bos_token, ...).
      {"model_specific_special_tokens",
       {{"image_token", "<|image|>"}, {"grid_bos_token", "<sop>"}, {"grid_eos_token", "<eop>"}}},
      {"extra_special_tokens", {"<|image|>", "<sop>", "<eop>"}},
      {"added_tokens_decoder", added_decoder}};
  RETURN_IF_ERROR(WriteJsonFile(folder / "tokenizer_config.json", config));
  return WriteProcessorExtras(folder);
}

// processor/'s chat template and image-processor config, beside either tokenizer.
absl::Status WriteProcessorExtras(const fs::path& folder) {
  // What apply_chat_template needs for a text (and image) prompt.
  RETURN_IF_ERROR(WriteTextFile(folder / "chat_template.jinja",
                                "{%- for message in messages -%}\n"
                                "{%- if message['content'] is string -%}{{ message['content'] }}\n"
                                "{%- else -%}{%- for item in message['content'] -%}\n"
                                "{%- if item['type'] == 'image' -%}<|image|>{%- elif item['type'] "
                                "== 'text' -%}{{ item['text'] }}{%- endif -%}\n"
                                "{%- endfor -%}{%- endif -%}\n"
                                "{%- endfor -%}\n"));
  // The image processor (image-to-image prompts; not read by diffmesh).
  json preprocessor = {{"image_processor_type", "GlmImageImageProcessor"},
                       {"processor_class", "GlmImageProcessor"},
                       {"do_resize", true},
                       {"do_rescale", true},
                       {"rescale_factor", 1.0 / 255.0},
                       {"do_normalize", true},
                       {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
                       {"image_std", {0.26862954, 0.26130258, 0.27577711}},
                       {"patch_size", 16},
                       {"temporal_patch_size", 1},
                       {"merge_size", 1}};
  return WriteJsonFile(folder / "preprocessor_config.json", preprocessor);
}

// tokenizer/: the ByT5 tokenizer's files (it has no vocabulary file: ids are bytes + 3).
absl::Status WriteByT5Tokenizer(const fs::path& folder) {
  json extra = json::array();
  for (int i = 0; i < 125; ++i) extra.push_back(absl::StrCat("<extra_id_", i, ">"));
  json special = {{"additional_special_tokens", extra},
                  {"eos_token", "</s>"},
                  {"pad_token", "<pad>"},
                  {"unk_token", "<unk>"}};
  RETURN_IF_ERROR(WriteJsonFile(folder / "special_tokens_map.json", special));
  json config = special;
  config["extra_ids"] = 125;  // <extra_id_0>..<extra_id_124>, as listed
  config["tokenizer_class"] = "ByT5Tokenizer";
  return WriteJsonFile(folder / "tokenizer_config.json", config);
}

std::string FloatJson(float v) { return absl::StrCat(v); }

}  // namespace

std::string SnapshotComponentDir(const GlmImageSpec& spec, Component component) {
  return (fs::path(spec.dir) / ComponentFolder(component)).string();
}

absl::StatusOr<GlmImageSpec> SpecFromSnapshot(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model dir ", dir, " is not a directory"));
  }
  const fs::path root(dir);
  const fs::path index_path = root / "model_index.json";
  ASSIGN_OR_RETURN(json index, ReadJsonFile(index_path));
  if (index.value("_class_name", std::string()) != kPipelineClass) {
    return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": _class_name is ",
                                                   index.value("_class_name", json()).dump(),
                                                   ", not ", kPipelineClass));
  }
  for (const char* component : {"transformer", "vae", "text_encoder", "vision_language_encoder",
                                "scheduler", "processor"}) {
    if (!index.contains(component)) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": lists no '", component, "' component"));
    }
  }
  GlmImageSpec spec;
  spec.dir = dir;
  spec.name = SnapshotName(index, dir);
  spec.max_image_size = SnapshotLimits().max_size();
  // Each config is read and parsed here, so that a bad one is reported by file at startup.
  const fs::path dit_path = root / "transformer" / "config.json";
  ASSIGN_OR_RETURN(spec.transformer, ReadJsonFile(dit_path));
  RETURN_IF_ERROR(InFile(DitConfig::FromJson(spec.transformer).status(), dit_path.string()));
  const fs::path vae_path = root / "vae" / "config.json";
  ASSIGN_OR_RETURN(spec.vae, ReadJsonFile(vae_path));
  RETURN_IF_ERROR(InFile(VaeConfig::FromJson(spec.vae).status(), vae_path.string()));
  const fs::path t5_path = root / "text_encoder" / "config.json";
  ASSIGN_OR_RETURN(spec.text_encoder, ReadJsonFile(t5_path));
  RETURN_IF_ERROR(InFile(T5Config::FromJson(spec.text_encoder).status(), t5_path.string()));
  const fs::path ar_path = root / "vision_language_encoder" / "config.json";
  ASSIGN_OR_RETURN(spec.vision_language_encoder, ReadJsonFile(ar_path));
  RETURN_IF_ERROR(
      InFile(ArConfig::FromJson(spec.vision_language_encoder).status(), ar_path.string()));
  const fs::path scheduler_path = root / "scheduler" / "scheduler_config.json";
  ASSIGN_OR_RETURN(spec.scheduler, ReadJsonFile(scheduler_path));
  RETURN_IF_ERROR(
      InFile(SchedulerConfig::FromJson(spec.scheduler).status(), scheduler_path.string()));
  RETURN_IF_ERROR(
      ReadSampling(root / "vision_language_encoder" / "generation_config.json", spec.sampling));
  RETURN_IF_ERROR(ReadArTokenizer(root / "processor", spec));
  return spec;
}

absl::StatusOr<WeightMap> LoadComponentWeights(const std::string& component_dir,
                                               const std::vector<ParamSpec>& specs,
                                               const WeightLoadOptions& options) {
  if (options.tp_size < 1 || options.tp_rank < 0 || options.tp_rank >= options.tp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor parallel rank ", options.tp_rank, " of ", options.tp_size));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(component_dir));
  ASSIGN_OR_RETURN(LoadPlan plan, PlanLoad(component_dir, *checkpoint, specs, options));
  // A thread per file; each converts its tensors one at a time from the mapping.
  std::vector<const std::vector<LoadItem>*> groups;
  std::vector<std::string> files;
  for (const auto& [file, items] : plan) {
    files.push_back(file);
    groups.push_back(&items);
  }
  std::vector<absl::Status> statuses(groups.size());
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> loaded(groups.size());
  std::vector<std::thread> threads;
  for (size_t g = 0; g < groups.size(); ++g) {
    threads.emplace_back([&, g] {
      try {
        for (const LoadItem& item : *groups[g]) {
          loaded[g].emplace_back(item.spec->name,
                                 ConvertTensor(*item.view, item.split_dim, options));
        }
      } catch (const std::exception& e) {
        statuses[g] = absl::InternalError(absl::StrCat("converting ", files[g], ": ", e.what()));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : statuses) RETURN_IF_ERROR(s);
  WeightMap out;
  for (auto& group : loaded) {
    for (auto& [name, tensor] : group) out.emplace(std::move(name), std::move(tensor));
  }
  return out;
}

absl::Status ValidateSnapshot(const GlmImageSpec& spec) {
  if (spec.dir.empty()) return absl::InvalidArgumentError("spec has no snapshot dir");
  struct Part {
    Component component;
    std::vector<ParamSpec> params;
    WeightLoadOptions options;
  };
  std::vector<Part> parts;
  ASSIGN_OR_RETURN(DitConfig dit, DitConfig::FromJson(spec.transformer));
  parts.push_back({Component::kTransformer, GlmImageDit::Params(dit), {}});
  ASSIGN_OR_RETURN(VaeConfig vae, VaeConfig::FromJson(spec.vae));
  parts.push_back({Component::kVae, AutoencoderKl::Params(vae, VaeParts::kAll), {}});
  ASSIGN_OR_RETURN(T5Config t5, T5Config::FromJson(spec.text_encoder));
  parts.push_back({Component::kTextEncoder, T5Encoder::Params(t5), {}});
  parts.back().options.aliases = {{"shared.weight", {"encoder.embed_tokens.weight"}}};
  ASSIGN_OR_RETURN(ArConfig ar, ArConfig::FromJson(spec.vision_language_encoder));
  parts.push_back({Component::kVisionLanguageEncoder, ArModel::Params(ar), {}});
  parts.back().options.ignored_prefixes = ArModel::IgnoredPrefixes();
  for (const Part& part : parts) {
    const std::string dir = SnapshotComponentDir(spec, part.component);
    ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
    RETURN_IF_ERROR(PlanLoad(dir, *checkpoint, part.params, part.options).status());
  }
  return absl::OkStatus();
}

absl::Status WriteSnapshot(const GlmImageSpec& spec, const std::string& dir,
                           const SnapshotWriteOptions& options) {
  if (!IsFloating(options.dtype) || options.dtype == DType::kFloat64) {
    return absl::InvalidArgumentError("snapshot dtype must be F32, F16 or BF16");
  }
  ASSIGN_OR_RETURN(DitConfig dit, DitConfig::FromJson(spec.transformer));
  ASSIGN_OR_RETURN(VaeConfig vae, VaeConfig::FromJson(spec.vae));
  ASSIGN_OR_RETURN(T5Config t5, T5Config::FromJson(spec.text_encoder));
  ASSIGN_OR_RETURN(ArConfig ar, ArConfig::FromJson(spec.vision_language_encoder));
  RETURN_IF_ERROR(SchedulerConfig::FromJson(spec.scheduler).status());
  const fs::path root(dir);
  std::error_code ec;
  for (const char* sub : {"transformer", "vae", "text_encoder", "vision_language_encoder",
                          "scheduler", "processor", "tokenizer"}) {
    fs::create_directories(root / sub, ec);
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot create ", (root / sub).string(), ": ", ec.message()));
    }
  }
  const json model_index = {
      {"_class_name", kPipelineClass},
      {"_diffusers_version", "0.37.0.dev0"},
      {"processor", {"transformers", "GlmImageProcessor"}},
      {"scheduler", {"diffusers", "FlowMatchEulerDiscreteScheduler"}},
      {"text_encoder", {"transformers", "T5EncoderModel"}},
      {"tokenizer", {"transformers", "ByT5Tokenizer"}},
      {"transformer", {"diffusers", "GlmImageTransformer2DModel"}},
      {"vae", {"diffusers", "AutoencoderKL"}},
      {"vision_language_encoder", {"transformers", "GlmImageForConditionalGeneration"}}};
  RETURN_IF_ERROR(WriteJsonFile(root / "model_index.json", model_index));
  RETURN_IF_ERROR(WriteJsonFile(root / "transformer" / "config.json", spec.transformer));
  RETURN_IF_ERROR(WriteJsonFile(root / "vae" / "config.json", spec.vae));
  RETURN_IF_ERROR(WriteJsonFile(root / "text_encoder" / "config.json", spec.text_encoder));
  RETURN_IF_ERROR(WriteJsonFile(root / "vision_language_encoder" / "config.json",
                                spec.vision_language_encoder));
  RETURN_IF_ERROR(WriteJsonFile(root / "scheduler" / "scheduler_config.json", spec.scheduler));

  const json text = spec.vision_language_encoder.value("text_config", json::object());
  json generation = {{"_from_model_config", false},
                     {"bos_token_id", text.value("bos_token_id", json())},
                     {"eos_token_id", ar.image_end_token_id},
                     {"pad_token_id", text.value("pad_token_id", json())},
                     {"do_sample", true},
                     // Shortest decimal spellings, so that reading them as float gives back
                     // exactly spec.sampling.
                     {"temperature", json::parse(FloatJson(spec.sampling.temperature))},
                     {"top_p", json::parse(FloatJson(spec.sampling.top_p))},
                     {"top_k", spec.sampling.top_k},
                     {"transformers_version", "5.0.0"}};
  RETURN_IF_ERROR(
      WriteJsonFile(root / "vision_language_encoder" / "generation_config.json", generation));
  RETURN_IF_ERROR(WriteArTokenizer(root / "processor", spec, options.ar_tokenizer_dir));
  RETURN_IF_ERROR(WriteByT5Tokenizer(root / "tokenizer"));

  const DType dt = options.dtype;
  RETURN_IF_ERROR(WriteComponentWeights(
      root / "transformer", "diffusion_pytorch_model", GlmImageDit::Params(dit),
      ComponentSeed(spec, Component::kTransformer), dt, options.sharded ? 3 : 1));
  RETURN_IF_ERROR(WriteComponentWeights(root / "vae", "diffusion_pytorch_model",
                                        AutoencoderKl::Params(vae, VaeParts::kAll),
                                        ComponentSeed(spec, Component::kVae), dt, 1));
  RETURN_IF_ERROR(WriteComponentWeights(root / "text_encoder", "model", T5Encoder::Params(t5),
                                        ComponentSeed(spec, Component::kTextEncoder), dt, 1));
  return WriteComponentWeights(root / "vision_language_encoder", "model", ArModel::Params(ar),
                               ComponentSeed(spec, Component::kVisionLanguageEncoder), dt,
                               options.sharded ? 4 : 1);
}

}  // namespace diffmesh::models::glm_image
