#include "models/glm_image/ar_prompt.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {
namespace {

// Target grid (H/32 × W/32) and preview grid of a text-to-image request, as
// GlmImageProcessor._build_prompt_with_target_shape computes them.
absl::Status PlanGrids(int height, int width, ArPrompt& p) {
  constexpr int kFactor = 32;
  if (height < kFactor || width < kFactor || height % kFactor != 0 || width % kFactor != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("height/width: ", height, "x", width, " is not a positive multiple of 32"));
  }
  p.target = {height / kFactor, width / kFactor};
  const double ratio = static_cast<double>(p.target.height) / static_cast<double>(p.target.width);
  p.preview = {static_cast<int64_t>(std::sqrt(ratio) * (kFactor / 2)),
               static_cast<int64_t>(std::sqrt(1.0 / ratio) * (kFactor / 2))};
  if (p.preview.height < 1 || p.preview.width < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("height/width: aspect ratio of ", height, "x", width, " is too extreme"));
  }
  p.max_new_tokens = p.preview.height * p.preview.width + p.target.height * p.target.width + 1;
  return absl::OkStatus();
}

absl::Status CheckLength(const ArPrompt& p, int64_t max_prompt_tokens) {
  if (static_cast<int64_t>(p.ids.size()) > max_prompt_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt: ", p.ids.size(), " tokens, the limit is ", max_prompt_tokens));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int64_t> EncodeBytes(const ArTokenizerSpec& tokenizer, const std::string& text) {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(tokenizer.byte_offset + c);
  return ids;
}

absl::StatusOr<ArPrompt> BuildTextToImagePrompt(const ArTokenizerSpec& tokenizer,
                                                const std::string& prompt, int height, int width) {
  ArPrompt p;
  RETURN_IF_ERROR(PlanGrids(height, width, p));
  p.ids = EncodeBytes(tokenizer, prompt);
  auto grid = [&](const ImageGrid& g) {
    p.ids.push_back(tokenizer.grid_bos_id);
    for (int64_t id : EncodeBytes(tokenizer, absl::StrCat(g.height, " ", g.width)))
      p.ids.push_back(id);
    p.ids.push_back(tokenizer.grid_eos_id);
  };
  grid(p.target);
  grid(p.preview);
  p.ids.push_back(tokenizer.bos_id);
  RETURN_IF_ERROR(CheckLength(p, tokenizer.max_prompt_tokens));
  return p;
}

absl::StatusOr<ArTextTokenizer> LoadArTextTokenizer(const std::string& processor_dir) {
  ArTextTokenizer t;
  ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> bpe,
                   BpeTokenizer::FromFile(processor_dir + "/tokenizer.json"));
  t.bpe = std::move(bpe);
  const std::string config_path = processor_dir + "/tokenizer_config.json";
  std::ifstream in(config_path);
  if (!in) return absl::NotFoundError(absl::StrCat(config_path, ": cannot open"));
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": not valid JSON: ", e.what()));
  }
  // A token is written either as its text or as an AddedToken object {"content": ...}.
  auto token = [&](const char* key, std::string& out) -> absl::Status {
    const nlohmann::json* v = nullptr;
    if (config.contains(key)) {
      v = &config[key];
    } else if (config.contains("model_specific_special_tokens") &&
               config["model_specific_special_tokens"].contains(key)) {
      v = &config["model_specific_special_tokens"][key];
    }
    if (v != nullptr && v->is_object() && v->contains("content")) v = &(*v)["content"];
    if (v == nullptr || !v->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": no ", key));
    }
    out = v->get<std::string>();
    if (!t.bpe->TokenToId(out)) {
      return absl::InvalidArgumentError(
          absl::StrCat(config_path, ": ", key, " \"", out, "\" is not a token of tokenizer.json"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(token("grid_bos_token", t.grid_bos_token));
  RETURN_IF_ERROR(token("grid_eos_token", t.grid_eos_token));
  RETURN_IF_ERROR(token("bos_token", t.bos_token));
  return t;
}

absl::StatusOr<ArPrompt> BuildTextToImagePrompt(const ArTextTokenizer& tokenizer,
                                                const std::string& prompt, int height, int width) {
  if (tokenizer.bpe == nullptr)
    return absl::FailedPreconditionError("AR text tokenizer not loaded");
  ArPrompt p;
  RETURN_IF_ERROR(PlanGrids(height, width, p));
  const std::string text =
      absl::StrCat(prompt, tokenizer.grid_bos_token, p.target.height, " ", p.target.width,
                   tokenizer.grid_eos_token, tokenizer.grid_bos_token, p.preview.height, " ",
                   p.preview.width, tokenizer.grid_eos_token, tokenizer.bos_token);
  ASSIGN_OR_RETURN(p.ids, tokenizer.bpe->Encode(text, /*add_special_tokens=*/true));
  RETURN_IF_ERROR(CheckLength(p, tokenizer.max_prompt_tokens));
  return p;
}

absl::StatusOr<ArImageToImagePrompt> BuildImageToImagePrompt(const ArTokenizerSpec& tokenizer,
                                                             const ArConfig& config,
                                                             const std::string& prompt,
                                                             const std::vector<ImageGrid>& sources,
                                                             int height, int width) {
  constexpr int kFactor = 32;
  if (height < kFactor || width < kFactor || height % kFactor != 0 || width % kFactor != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("height/width: ", height, "x", width, " is not a positive multiple of 32"));
  }
  ArImageToImagePrompt p;
  p.sources = sources;
  p.target = {height / kFactor, width / kFactor};
  p.max_new_tokens = p.target.height * p.target.width + 1;
  for (const ImageGrid& g : sources) {
    if (g.height <= 0 || g.width <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("condition image grid ", g.height, "x", g.width, " is empty"));
    }
    p.ids.push_back(config.image_start_token_id);
    p.ids.insert(p.ids.end(), g.height * g.width, config.image_token_id);
    p.ids.push_back(config.image_end_token_id);
  }
  for (int64_t id : EncodeBytes(tokenizer, prompt)) p.ids.push_back(id);
  p.ids.push_back(tokenizer.grid_bos_id);
  for (int64_t id : EncodeBytes(tokenizer, absl::StrCat(p.target.height, " ", p.target.width)))
    p.ids.push_back(id);
  p.ids.push_back(tokenizer.grid_eos_id);
  p.ids.push_back(tokenizer.bos_id);
  if (static_cast<int64_t>(p.ids.size()) > tokenizer.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", p.ids.size(),
                                                   " tokens, the limit is ",
                                                   tokenizer.max_prompt_tokens));
  }
  return p;
}

absl::StatusOr<std::vector<int64_t>> PlaceImageTokens(const std::vector<int64_t>& ids,
                                                      int64_t image_token_id,
                                                      const std::vector<int64_t>& image_tokens) {
  std::vector<int64_t> out = ids;
  size_t next = 0;
  for (int64_t& id : out) {
    if (id != image_token_id) continue;
    if (next == image_tokens.size()) {
      next = image_tokens.size() + 1;  // more placeholders than tokens
      break;
    }
    id = image_tokens[next++];
  }
  if (next != image_tokens.size()) {
    const auto placeholders = std::count(ids.begin(), ids.end(), image_token_id);
    return absl::InvalidArgumentError(absl::StrCat("prompt has ", placeholders,
                                                   " image placeholders for ",
                                                   image_tokens.size(), " image tokens"));
  }
  return out;
}

}  // namespace diffmesh::models::glm_image
