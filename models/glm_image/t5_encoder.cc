#include "models/glm_image/t5_encoder.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/core/ops.h"

namespace diffmesh::models::glm_image {
namespace {

template <typename T>
absl::Status ReadField(const nlohmann::json& json, const char* key, T& out) {
  return ReadConfigField(json, "t5", key, out);
}

bool KnownActivation(const std::string& f) {
  return f == "relu" || f == "gelu" || f == "gelu_new" || f == "gelu_pytorch_tanh" || f == "silu" ||
         f == "swish";
}

// All non-overlapping matches of open ([^open close]*) close, as re.findall returns them. Works on
// UTF-8 bytes: `open` and `close` are whole characters and UTF-8 is self-synchronising, so a byte
// match is a character match.
void FindQuoted(const std::string& text, const std::string& open, const std::string& close,
                std::vector<std::string>& out) {
  size_t pos = 0;
  while (true) {
    const size_t start = text.find(open, pos);
    if (start == std::string::npos) return;
    const size_t body = start + open.size();
    const size_t end = text.find(close, body);
    if (end == std::string::npos) return;  // no later start can close either
    if (open != close) {
      const size_t reopen = text.find(open, body);
      if (reopen < end) {  // the body may not contain `open`: retry from there
        pos = reopen;
        continue;
      }
    }
    out.push_back(text.substr(body, end - body));
    pos = end + close.size();
  }
}

// T5Block keeps fp16 activations finite after each sub-layer: clamp to ±(max − 1000) once an inf
// has appeared, else to ±max. Other dtypes pass through.
at::Tensor ClampFp16(const at::Tensor& x) {
  if (x.scalar_type() != at::kHalf) return x;
  const double limit = x.isinf().any().item<bool>() ? 65504.0 - 1000.0 : 65504.0;
  return x.clamp(-limit, limit);
}

constexpr int64_t kEos = 1;

struct SpecialToken {
  std::string text;
  int64_t id;
  bool strip;  // lstrip and rstrip
};

// ByT5Tokenizer's added tokens: <pad>, </s>, <unk> (ids 0..2) and <extra_id_0..124>, which follow
// the 256 byte ids (259..383).
const std::vector<SpecialToken>& ByT5SpecialTokens() {
  static const std::vector<SpecialToken>* tokens = [] {
    auto* t =
        new std::vector<SpecialToken>{{"<pad>", 0, true}, {"</s>", kEos, true}, {"<unk>", 2, true}};
    for (int i = 0; i < 125; ++i) {
      t->push_back({absl::StrCat("<extra_id_", i, ">"), 259 + i, false});
    }
    return t;
  }();
  return *tokens;
}

// Length of the Python-whitespace character (str.isspace) at `pos`, or 0.
size_t SpaceAt(const std::string& s, size_t pos) {
  const unsigned char c = s[pos];
  if ((c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)) return 1;
  auto cp_at = [&](size_t n) -> uint32_t {  // code point of an n-byte sequence
    if (pos + n > s.size()) return 0;
    uint32_t cp = c & (0xff >> (n + 1));
    for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3f);
    return cp;
  };
  uint32_t cp = 0;
  size_t n = 0;
  if ((c & 0xe0) == 0xc0) n = 2;
  if ((c & 0xf0) == 0xe0) n = 3;
  if (n == 0 || (cp = cp_at(n)) == 0) return 0;
  const bool space = cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
                     cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
  return space ? n : 0;
}

// str.lstrip() (leading) or str.rstrip() (trailing) on UTF-8 text.
std::string StripSpace(const std::string& s, bool leading) {
  if (leading) {
    size_t pos = 0;
    while (pos < s.size()) {
      const size_t n = SpaceAt(s, pos);
      if (n == 0) break;
      pos += n;
    }
    return s.substr(pos);
  }
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;  // back to the first byte of the last character
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80) --start;
    if (SpaceAt(s, start) != end - start) break;
    end = start;
  }
  return s.substr(0, end);
}

}  // namespace

absl::StatusOr<T5Config> T5Config::FromJson(const nlohmann::json& json) {
  T5Config c;
  RETURN_IF_ERROR(ReadField(json, "vocab_size", c.vocab_size));
  RETURN_IF_ERROR(ReadField(json, "d_model", c.d_model));
  RETURN_IF_ERROR(ReadField(json, "d_kv", c.d_kv));
  RETURN_IF_ERROR(ReadField(json, "d_ff", c.d_ff));
  RETURN_IF_ERROR(ReadField(json, "num_layers", c.num_layers));
  RETURN_IF_ERROR(ReadField(json, "num_heads", c.num_heads));
  RETURN_IF_ERROR(
      ReadField(json, "relative_attention_num_buckets", c.relative_attention_num_buckets));
  RETURN_IF_ERROR(
      ReadField(json, "relative_attention_max_distance", c.relative_attention_max_distance));
  RETURN_IF_ERROR(ReadField(json, "layer_norm_epsilon", c.layer_norm_epsilon));
  RETURN_IF_ERROR(ReadField(json, "feed_forward_proj", c.feed_forward_proj));
  RETURN_IF_ERROR(ReadField(json, "pad_token_id", c.pad_token_id));
  RETURN_IF_ERROR(ReadField(json, "eos_token_id", c.eos_token_id));

  // T5Config.__init__: "[gated-]act"; "gated-gelu" is the tanh GELU for backward compatibility.
  std::vector<std::string> act = absl::StrSplit(c.feed_forward_proj, '-');
  if (act.empty() || act.size() > 2 || (act.size() == 2 && act[0] != "gated")) {
    return absl::InvalidArgumentError(
        absl::StrCat("t5 config: bad feed_forward_proj '", c.feed_forward_proj, "'"));
  }
  c.dense_act_fn = act.back();
  c.is_gated_act = act[0] == "gated";
  if (c.feed_forward_proj == "gated-gelu") c.dense_act_fn = "gelu_new";
  // Values saved in config.json are set after __init__ by PretrainedConfig and so win.
  RETURN_IF_ERROR(ReadField(json, "dense_act_fn", c.dense_act_fn));
  RETURN_IF_ERROR(ReadField(json, "is_gated_act", c.is_gated_act));
  if (!KnownActivation(c.dense_act_fn)) {
    return absl::UnimplementedError(absl::StrCat("t5 config: activation ", c.dense_act_fn));
  }
  if (c.d_model <= 0 || c.d_kv <= 0 || c.d_ff <= 0 || c.num_heads <= 0 || c.num_layers <= 0 ||
      c.vocab_size <= 0 || c.relative_attention_num_buckets < 4 ||
      c.relative_attention_max_distance <= 0) {
    return absl::InvalidArgumentError("t5 config: non-positive size");
  }
  return c;
}

absl::StatusOr<T5Config> T5Config::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

std::vector<int64_t> ByT5Tokenize(const std::string& utf8, int64_t max_length) {
  // Split at special-token spellings (none is a prefix of another, so a left-to-right scan finds
  // what the tokenizer's trie finds).
  struct Piece {
    std::string text;  // bytes, when id < 0
    int64_t id = -1;
    bool strip = false;
  };
  std::vector<Piece> pieces;
  std::string pending;
  for (size_t pos = 0; pos < utf8.size();) {
    const SpecialToken* hit = nullptr;
    if (utf8[pos] == '<') {
      for (const SpecialToken& t : ByT5SpecialTokens()) {
        if (utf8.compare(pos, t.text.size(), t.text) == 0) {
          hit = &t;
          break;
        }
      }
    }
    if (hit == nullptr) {
      pending.push_back(utf8[pos++]);
      continue;
    }
    if (!pending.empty()) pieces.push_back({std::move(pending)});
    pending.clear();
    pieces.push_back({"", hit->id, hit->strip});
    pos += hit->text.size();
  }
  if (!pending.empty()) pieces.push_back({std::move(pending)});
  // <pad>, </s> and <unk> are AddedToken(lstrip=True, rstrip=True): the whitespace next to them
  // goes.
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (!pieces[i].strip) continue;
    if (i > 0 && pieces[i - 1].id < 0) pieces[i - 1].text = StripSpace(pieces[i - 1].text, false);
    if (i + 1 < pieces.size() && pieces[i + 1].id < 0) {
      pieces[i + 1].text = StripSpace(pieces[i + 1].text, true);
    }
  }
  std::vector<int64_t> ids;
  for (const Piece& p : pieces) {
    if (p.id >= 0) {
      ids.push_back(p.id);
    } else {
      for (unsigned char b : p.text) ids.push_back(b + 3);
    }
  }
  // truncation=True reserves room for the one special token build_inputs_with_special_tokens adds;
  // that token is </s>, left out when the ids already end with it.
  if (max_length > 0 && static_cast<int64_t>(ids.size()) > max_length - 1) {
    ids.resize(static_cast<size_t>(std::max<int64_t>(0, max_length - 1)));
  }
  if (ids.empty() || ids.back() != kEos) ids.push_back(kEos);
  return ids;
}

std::vector<std::string> GlyphTexts(const std::string& prompt) {
  std::vector<std::string> out;
  FindQuoted(prompt, "'", "'", out);
  FindQuoted(prompt, "\u201c", "\u201d", out);  // “ … ”
  FindQuoted(prompt, "\"", "\"", out);
  FindQuoted(prompt, "\u300c", "\u300d", out);  // 「 … 」
  return out;
}

GlyphInputs PrepareGlyphInputs(const std::vector<std::string>& glyph_texts,
                               int64_t max_sequence_length, int64_t pad_token_id) {
  std::vector<std::string> texts = glyph_texts;
  if (texts.empty()) texts.push_back("");
  // Reference: [pad] * ((len(input_ids) + 1) % 2) with input_ids the list of sequences.
  const bool lead_pad = texts.size() % 2 == 0;
  std::vector<std::vector<int64_t>> seqs;
  size_t longest = 0;
  for (const std::string& t : texts) {
    std::vector<int64_t> ids;
    if (lead_pad) ids.push_back(pad_token_id);
    for (int64_t id : ByT5Tokenize(t, max_sequence_length)) ids.push_back(id);
    longest = std::max(longest, ids.size());
    seqs.push_back(std::move(ids));
  }
  const int64_t rows = static_cast<int64_t>(seqs.size()), cols = static_cast<int64_t>(longest);
  at::Tensor ids = at::full({rows, cols}, pad_token_id, at::kLong);
  at::Tensor mask = at::zeros({rows, cols}, at::kLong);
  auto ids_a = ids.accessor<int64_t, 2>();
  auto mask_a = mask.accessor<int64_t, 2>();
  for (int64_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < seqs[r].size(); ++j) {
      ids_a[r][j] = seqs[r][j];
      mask_a[r][j] = 1;
    }
  }
  return {ids, mask};
}

std::vector<ParamSpec> T5Encoder::Params(const T5Config& c) {
  std::vector<ParamSpec> specs;
  const int64_t inner = c.num_heads * c.d_kv;
  specs.push_back({"shared.weight", {c.vocab_size, c.d_model}, Init::kNormal, 1.0f});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string attn = absl::StrCat("encoder.block.", i, ".layer.0.");
    for (const char* p : {"q", "k", "v"}) {
      AddLinear(specs, attn + "SelfAttention." + p, c.d_model, inner,
                /*bias=*/false);
    }
    AddLinear(specs, attn + "SelfAttention.o", inner, c.d_model,
              /*bias=*/false);
    if (i == 0) {
      specs.push_back({attn + "SelfAttention.relative_attention_bias.weight",
                       {c.relative_attention_num_buckets, c.num_heads},
                       Init::kNormal,
                       0.5f});
    }
    specs.push_back({attn + "layer_norm.weight", {c.d_model}, Init::kOnes, 0.0f});
    const std::string ff = absl::StrCat("encoder.block.", i, ".layer.1.");
    if (c.is_gated_act) {
      AddLinear(specs, ff + "DenseReluDense.wi_0", c.d_model, c.d_ff,
                /*bias=*/false);
      AddLinear(specs, ff + "DenseReluDense.wi_1", c.d_model, c.d_ff,
                /*bias=*/false);
    } else {
      AddLinear(specs, ff + "DenseReluDense.wi", c.d_model, c.d_ff,
                /*bias=*/false);
    }
    AddLinear(specs, ff + "DenseReluDense.wo", c.d_ff, c.d_model,
              /*bias=*/false);
    specs.push_back({ff + "layer_norm.weight", {c.d_model}, Init::kOnes, 0.0f});
  }
  specs.push_back({"encoder.final_layer_norm.weight", {c.d_model}, Init::kOnes, 0.0f});
  return specs;
}

absl::StatusOr<std::unique_ptr<T5Encoder>> T5Encoder::Create(const T5Config& config,
                                                             WeightMap weights) {
  RETURN_IF_ERROR(CheckWeights(weights, Params(config)));
  return std::unique_ptr<T5Encoder>(new T5Encoder(config, std::move(weights)));
}

absl::StatusOr<std::unique_ptr<T5Encoder>> T5Encoder::Load(const std::string& component_dir,
                                                           at::ScalarType dtype) {
  ASSIGN_OR_RETURN(T5Config config, T5Config::FromFile(component_dir + "/config.json"));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(component_dir));
  std::vector<ParamSpec> specs = Params(config);
  const std::string kShared = "shared.weight", kEmbed = "encoder.embed_tokens.weight";
  // The embedding is tied: read whichever name the checkpoint stores it under.
  const bool rename = checkpoint->Find(kShared) == nullptr && checkpoint->Find(kEmbed) != nullptr;
  if (rename) specs[0].name = kEmbed;
  ASSIGN_OR_RETURN(WeightMap weights, LoadWeights(*checkpoint, specs, dtype,
                                                  rename ? std::vector<std::string>{}
                                                         : std::vector<std::string>{kEmbed}));
  if (rename) {
    auto node = weights.extract(kEmbed);
    node.key() = kShared;
    weights.insert(std::move(node));
  }
  return Create(config, std::move(weights));
}

absl::StatusOr<std::unique_ptr<T5Encoder>> T5Encoder::CreateSeeded(const T5Config& config,
                                                                   uint64_t seed) {
  return Create(config, InitSeeded(Params(config), seed));
}

at::Tensor T5Encoder::RelativePositionBuckets(int64_t length, int64_t num_buckets,
                                              int64_t max_distance) {
  at::Tensor pos = at::arange(length, at::kLong);
  at::Tensor rel = pos.unsqueeze(0) - pos.unsqueeze(1);  // [S, S]: memory − query
  // Bidirectional: half the buckets for each sign.
  const int64_t half = num_buckets / 2;
  at::Tensor buckets = (rel > 0).to(at::kLong) * half;
  rel = rel.abs();
  // Exact buckets below max_exact, then logarithmic bins up to max_distance; the float arithmetic
  // follows the reference op by op so that bucket boundaries agree.
  const int64_t max_exact = half / 2;
  at::Tensor is_small = rel < max_exact;
  const double log_ratio = std::log(static_cast<double>(max_distance) / max_exact);
  at::Tensor large = (at::log(rel.to(at::kFloat) / static_cast<double>(max_exact)) / log_ratio *
                      static_cast<double>(half - max_exact))
                         .to(at::kLong) +
                     max_exact;
  large = at::minimum(large, at::full_like(large, half - 1));
  return buckets + at::where(is_small, rel, large);
}

at::Tensor T5Encoder::Act(const at::Tensor& x) const {
  const std::string& f = config_.dense_act_fn;
  if (f == "gelu_new" || f == "gelu_pytorch_tanh") return GeluTanh(x);
  if (f == "gelu") return at::gelu(x);
  if (f == "silu" || f == "swish") return at::silu(x);
  return at::relu(x);  // checked in FromJson
}

at::Tensor T5Encoder::Forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) const {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be [B, S], got ", input_ids.sizes());
  const T5Config& c = config_;
  const at::Tensor embed = Get(weights_, "shared.weight");
  const int64_t b = input_ids.size(0), s = input_ids.size(1);
  const int64_t heads = c.num_heads, dk = c.d_kv;
  const auto dtype = embed.scalar_type();
  const auto device = embed.device();

  at::Tensor x = at::embedding(embed, input_ids.to(device, at::kLong));  // [B, S, D]

  // Position bias [1, H, S, S] from block 0's table, shared by every block, plus the padding mask
  // (1 − m)·finfo.min [B, 1, 1, S]; the sum is the additive attention bias.
  at::Tensor buckets = RelativePositionBuckets(s, c.relative_attention_num_buckets,
                                               c.relative_attention_max_distance)
                           .to(device);
  at::Tensor bias = at::embedding(Get(weights_,
                                      "encoder.block.0.layer.0.SelfAttention."
                                      "relative_attention_bias.weight"),
                                  buckets);     // [S, S, H]
  bias = bias.permute({2, 0, 1}).unsqueeze(0);  // [1, H, S, S]
  if (attention_mask.defined()) {
    TORCH_CHECK(attention_mask.sizes() == input_ids.sizes(), "attention_mask ",
                attention_mask.sizes(), " does not match input_ids ", input_ids.sizes());
    const double lowest = dtype == at::kHalf       ? -65504.0
                          : dtype == at::kBFloat16 ? -3.3895313892515355e38
                          : dtype == at::kDouble   ? std::numeric_limits<double>::lowest()
                                                   : std::numeric_limits<float>::lowest();
    at::Tensor m = attention_mask.to(device, dtype).view({b, 1, 1, s});
    bias = bias + (1.0 - m) * lowest;  // [B, H, S, S]
  }

  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string attn = absl::StrCat("encoder.block.", i, ".layer.0.");
    at::Tensor h = RmsNorm(x, Get(weights_, attn + "layer_norm.weight"), c.layer_norm_epsilon);
    auto heads_view = [&](const char* p) {  // [B, S, H·dk] → [B, H, S, dk]
      return Linear(h, weights_, attn + "SelfAttention." + p)
          .view({b, s, heads, dk})
          .transpose(1, 2);
    };
    at::Tensor q = heads_view("q"), k = heads_view("k"), v = heads_view("v");
    // T5 folds the 1/sqrt(dk) scaling into its initialisation: no scaling here.
    at::Tensor o = Attention(q, k, v, bias, /*causal=*/false,
                             /*scale=*/1.0);  // [B, H, S, dk]
    o = o.transpose(1, 2).reshape({b, s, heads * dk});
    x = ClampFp16(x + Linear(o, weights_, attn + "SelfAttention.o"));

    const std::string ff = absl::StrCat("encoder.block.", i, ".layer.1.");
    h = RmsNorm(x, Get(weights_, ff + "layer_norm.weight"), c.layer_norm_epsilon);
    if (c.is_gated_act) {
      h = Act(Linear(h, weights_, ff + "DenseReluDense.wi_0")) *
          Linear(h, weights_, ff + "DenseReluDense.wi_1");
    } else {
      h = Act(Linear(h, weights_, ff + "DenseReluDense.wi"));
    }
    x = ClampFp16(x + Linear(h, weights_, ff + "DenseReluDense.wo"));
  }
  return RmsNorm(x, Get(weights_, "encoder.final_layer_norm.weight"), c.layer_norm_epsilon);
}

at::Tensor T5Encoder::EncodeGlyphs(const std::vector<std::string>& prompts,
                                   int64_t max_sequence_length) const {
  TORCH_CHECK(!prompts.empty(), "EncodeGlyphs needs at least one prompt");
  const at::Tensor embed = Get(weights_, "shared.weight");
  std::vector<at::Tensor> per_prompt;
  int64_t longest = 0;
  for (const std::string& prompt : prompts) {
    GlyphInputs in =
        PrepareGlyphInputs(GlyphTexts(prompt), max_sequence_length, config_.pad_token_id);
    at::Tensor hidden = Forward(in.input_ids, in.attention_mask);  // [N, L, D]
    // last_hidden_state[mask.bool()]: mask-1 positions, row-major → [1, n, D]
    at::Tensor keep = in.attention_mask.to(hidden.device(), at::kBool).unsqueeze(-1);
    at::Tensor e = hidden.masked_select(keep).view({1, -1, hidden.size(2)});
    longest = std::max(longest, e.size(1));
    per_prompt.push_back(std::move(e));
  }
  for (at::Tensor& e : per_prompt) {
    if (e.size(1) < longest) {  // left padding with zeros
      at::Tensor pad = at::zeros({1, longest - e.size(1), e.size(2)}, e.options());
      e = at::cat({pad, e}, 1);
    }
  }
  return at::cat(per_prompt, 0).to(embed.scalar_type());  // [num_prompts, longest, D]
}

}  // namespace diffmesh::models::glm_image
