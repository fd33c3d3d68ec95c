#include "models/glm_image/ar_prompt.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace diffmesh::models::glm_image {

std::vector<int64_t> EncodeBytes(const ArTokenizerSpec& tokenizer, const std::string& text) {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(tokenizer.byte_offset + c);
  return ids;
}

absl::StatusOr<ArPrompt> BuildTextToImagePrompt(const ArTokenizerSpec& tokenizer,
                                                const std::string& prompt, int height, int width) {
  constexpr int kFactor = 32;
  if (height < kFactor || width < kFactor || height % kFactor != 0 || width % kFactor != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("height/width: ", height, "x", width, " is not a positive multiple of 32"));
  }
  ArPrompt p;
  p.target = {height / kFactor, width / kFactor};
  const double ratio = static_cast<double>(p.target.height) / static_cast<double>(p.target.width);
  p.preview = {static_cast<int64_t>(std::sqrt(ratio) * (kFactor / 2)),
               static_cast<int64_t>(std::sqrt(1.0 / ratio) * (kFactor / 2))};
  if (p.preview.height < 1 || p.preview.width < 1) {
    return absl::InvalidArgumentError(absl::StrCat("height/width: aspect ratio of ", height, "x",
                                                   width, " is too extreme"));
  }
  p.ids = EncodeBytes(tokenizer, prompt);
  auto grid = [&](const ImageGrid& g) {
    p.ids.push_back(tokenizer.grid_bos_id);
    for (int64_t id : EncodeBytes(tokenizer, absl::StrCat(g.height, " ", g.width))) p.ids.push_back(id);
    p.ids.push_back(tokenizer.grid_eos_id);
  };
  grid(p.target);
  grid(p.preview);
  p.ids.push_back(tokenizer.bos_id);
  if (static_cast<int64_t>(p.ids.size()) > tokenizer.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", p.ids.size(),
                                                   " tokens, the limit is ", tokenizer.max_prompt_tokens));
  }
  p.max_new_tokens = p.preview.height * p.preview.width + p.target.height * p.target.width + 1;
  return p;
}

}  // namespace diffmesh::models::glm_image
