// The AR model's text-to-image prompt, built as transformers' GlmImageProcessor builds it:
//   {prompt}<grid_bos>{token_h} {token_w}<grid_eos><grid_bos>{prev_h} {prev_w}<grid_eos><bos>
// with token_h × token_w = (H/32) × (W/32) the target grid and prev_h × prev_w the preview grid
// (16 × 16 for a square image). The model then generates the preview grid, the target grid and
// the image-end token.
#ifndef DIFFMESH_MODELS_GLM_IMAGE_AR_PROMPT_H_
#define DIFFMESH_MODELS_GLM_IMAGE_AR_PROMPT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/glm_image/ar_model.h"
#include "models/glm_image/bpe_tokenizer.h"

namespace diffmesh::models::glm_image {

// Text tokenizer of a model's AR stage. The built-in small models use byte tokens (UTF-8 byte b
// → byte_offset + b) and three special ids; real checkpoints bring a BPE tokenizer.json.
struct ArTokenizerSpec {
  int64_t byte_offset = 0;
  int64_t grid_bos_id = 0;
  int64_t grid_eos_id = 0;
  int64_t bos_id = 0;
  int64_t max_prompt_tokens = 2048;
};

// Sampling of image tokens (defaults as the released model is served).
struct ArSampling {
  float temperature = 0.9f;  // 0: greedy
  int64_t top_k = 0;         // 0: no top-k cut
  float top_p = 0.75f;       // 1: no nucleus cut
};

struct ArPrompt {
  std::vector<int64_t> ids;    // prompt token ids
  ImageGrid target;            // (H/32) × (W/32)
  ImageGrid preview;           // generated first, then dropped
  int64_t max_new_tokens = 0;  // preview + target + the end token
};

std::vector<int64_t> EncodeBytes(const ArTokenizerSpec& tokenizer, const std::string& text);

// INVALID_ARGUMENT when the size is not a positive multiple of 32 or the prompt is too long.
absl::StatusOr<ArPrompt> BuildTextToImagePrompt(const ArTokenizerSpec& tokenizer,
                                                const std::string& prompt, int height, int width);

// The AR text tokenizer of a real checkpoint: processor/tokenizer.json (byte-level BPE) and the
// grid and image-start tokens that processor/tokenizer_config.json names (GLM-Image: grid_bos
// "<sop>", grid_eos "<eop>", bos "<|dit_token_16384|>").
struct ArTextTokenizer {
  std::shared_ptr<const BpeTokenizer> bpe;
  std::string grid_bos_token;
  std::string grid_eos_token;
  std::string bos_token;
  int64_t max_prompt_tokens = 2048;
};

// Reads `processor_dir`/tokenizer.json and `processor_dir`/tokenizer_config.json. Errors name the
// file; each of the three tokens must be a single token of the vocabulary.
absl::StatusOr<ArTextTokenizer> LoadArTextTokenizer(const std::string& processor_dir);

// The same prompt through a real tokenizer, with the ids transformers' GlmImageProcessor (and the
// diffusers pipeline's apply_chat_template, whose template passes the text through) produces:
// the whole string "{prompt}<grid_bos>H W<grid_eos><grid_bos>h w<grid_eos><bos>" is encoded
// with add_special_tokens, so special-token text inside `prompt` is read as those tokens and the
// tokenizer's post-processor adds what it adds (GLM-4's: [gMASK]<sop> in front).
absl::StatusOr<ArPrompt> BuildTextToImagePrompt(const ArTextTokenizer& tokenizer,
                                                const std::string& prompt, int height, int width);

// ---- Image-to-image (editing) prompts.

// The AR prompt of an edit request as transformers' GlmImageProcessor builds it from a chat
// template that renders each condition image as <image_start><|image|><image_end> before the
// text: every <|image|> expanded to gh·gw placeholders (`image_token_id`), then
//   {prompt}<grid_bos>{H/32} {W/32}<grid_eos><bos>
// with ONE target grid (no preview grid in image-to-image mode). The model generates the target
// grid and the image-end token.
struct ArImageToImagePrompt {
  std::vector<int64_t> ids;         // with placeholders; see PlaceImageTokens
  std::vector<ImageGrid> sources;   // the condition images' AR grids, in prompt order
  ImageGrid target;                 // (H/32) × (W/32)
  int64_t max_new_tokens = 0;       // target h·w + the end token
};

// `sources` are the condition images' patch grids (PreprocessArConditionImage). Byte tokens, as
// the built-in models and the reference fixtures' character-level tokenizer use; the special ids
// come from `config` (image start/end/placeholder) and `tokenizer` (grid markers, bos).
// INVALID_ARGUMENT when the size is not a positive multiple of 32, a grid is empty or the prompt
// is too long.
absl::StatusOr<ArImageToImagePrompt> BuildImageToImagePrompt(const ArTokenizerSpec& tokenizer,
                                                             const ArConfig& config,
                                                             const std::string& prompt,
                                                             const std::vector<ImageGrid>& sources,
                                                             int height, int width);

// The model's placeholder replacement (get_placeholder_mask + masked_scatter): the k-th
// `image_token_id` in `ids` becomes image_tokens[k] (VQ ids, images concatenated in prompt
// order). INVALID_ARGUMENT when the counts differ.
absl::StatusOr<std::vector<int64_t>> PlaceImageTokens(const std::vector<int64_t>& ids,
                                                      int64_t image_token_id,
                                                      const std::vector<int64_t>& image_tokens);

}  // namespace diffmesh::models::glm_image

#endif  // DIFFMESH_MODELS_GLM_IMAGE_AR_PROMPT_H_
