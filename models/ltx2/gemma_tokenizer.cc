#include "models/ltx2/gemma_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace diffmesh::models::ltx2 {
namespace {

constexpr std::string_view kSpaceSymbol = "\xe2\x96\x81";  // U+2581
constexpr std::string_view kReplacementChar = "\xef\xbf\xbd";

// --- Protocol-buffer wire format, just what sentencepiece_model.proto needs. ---

class WireReader {
 public:
  explicit WireReader(std::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }

  absl::StatusOr<uint64_t> Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return Error("truncated varint");
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return v;
    }
    return Error("varint too long");
  }
  absl::StatusOr<std::string_view> Bytes() {
    ASSIGN_OR_RETURN(uint64_t n, Varint());
    if (n > data_.size() - pos_) return Error("truncated length-delimited field");
    std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  absl::StatusOr<uint32_t> Fixed32() {
    if (data_.size() - pos_ < 4) return Error("truncated fixed32");
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(data_[pos_ + i]);
    pos_ += 4;
    return v;
  }
  absl::Status Skip(int wire_type) {
    switch (wire_type) {
      case 0:
        return Varint().status();
      case 1:
        if (data_.size() - pos_ < 8) return Error("truncated fixed64");
        pos_ += 8;
        return absl::OkStatus();
      case 2:
        return Bytes().status();
      case 5:
        return Fixed32().status();
      default:
        return Error(absl::StrCat("unsupported wire type ", wire_type));
    }
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.model: ", what, " at byte ", pos_));
  }
  std::string_view data_;
  size_t pos_ = 0;
};

// Iterates the fields of one message: `on_field(number, wire_type, reader)` consumes the value
// or returns false to have it skipped.
absl::Status ForEachField(
    std::string_view message,
    const std::function<absl::StatusOr<bool>(uint32_t, int, WireReader&)>& on_field) {
  WireReader r(message);
  while (!r.done()) {
    ASSIGN_OR_RETURN(uint64_t tag, r.Varint());
    const uint32_t number = static_cast<uint32_t>(tag >> 3);
    const int wire_type = static_cast<int>(tag & 7);
    ASSIGN_OR_RETURN(bool used, on_field(number, wire_type, r));
    if (!used) RETURN_IF_ERROR(r.Skip(wire_type));
  }
  return absl::OkStatus();
}

// --- UTF-8 as SentencePiece's string_util sees it. ---

size_t OneCharLen(char c) {
  return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[(static_cast<unsigned char>(c) & 0xFF) >> 4];
}

bool IsTrail(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

bool ValidCodepoint(uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

// string_util::DecodeUTF8 + IsValidDecodeUTF8: the length of a well-formed character at the
// front of `s`, or 0 when malformed (SentencePiece then consumes one byte as U+FFFD).
size_t ValidCharLen(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i])); };
  if (b(0) < 0x80) return 1;
  if (s.size() >= 2 && (b(0) & 0xE0) == 0xC0) {
    const uint32_t cp = ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    return IsTrail(s[1]) && cp >= 0x80 && ValidCodepoint(cp) ? 2 : 0;
  }
  if (s.size() >= 3 && (b(0) & 0xF0) == 0xE0) {
    const uint32_t cp = ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    return IsTrail(s[1]) && IsTrail(s[2]) && cp >= 0x800 && ValidCodepoint(cp) ? 3 : 0;
  }
  if (s.size() >= 4 && (b(0) & 0xF8) == 0xF0) {
    const uint32_t cp =
        ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
    return IsTrail(s[1]) && IsTrail(s[2]) && IsTrail(s[3]) && cp >= 0x10000 && ValidCodepoint(cp)
               ? 4
               : 0;
  }
  return 0;
}

// Code point and byte length of the well-formed UTF-8 character at `pos`, or {0, 0}.
std::pair<uint32_t, size_t> CodepointAt(std::string_view s, size_t pos) {
  const size_t n = ValidCharLen(s.substr(pos));
  if (n == 0) return {0, 0};
  const unsigned char c = static_cast<unsigned char>(s[pos]);
  uint32_t cp = n == 1 ? c : c & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
  return {cp, n};
}

bool PythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 ||
         cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string ByteToPiece(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
  return buf;
}

}  // namespace

std::string StripPythonWhitespace(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    auto [cp, n] = CodepointAt(text, begin);
    if (n == 0 || !PythonSpace(cp)) break;
    begin += n;
  }
  size_t end = text.size();
  while (end > begin) {
    size_t start = end - 1;  // back to the lead byte of the last character
    while (start > begin && IsTrail(text[start])) --start;
    auto [cp, n] = CodepointAt(text, start);
    if (n != end - start || !PythonSpace(cp)) break;
    end = start;
  }
  return std::string(text.substr(begin, end - begin));
}

absl::StatusOr<std::unique_ptr<GemmaTokenizer>> GemmaTokenizer::Load(const std::string& path) {
  std::string file = path;
  if (std::filesystem::is_directory(path)) file = path + "/tokenizer.model";
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(file, ": cannot open"));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  auto tokenizer = FromSerializedProto(bytes.str());
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(file, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<GemmaTokenizer>> GemmaTokenizer::FromSerializedProto(
    std::string_view proto) {
  std::unique_ptr<GemmaTokenizer> t(new GemmaTokenizer());
  // ModelProto: 1 pieces {1 piece, 2 score, 3 type}, 2 trainer_spec, 3 normalizer_spec.
  RETURN_IF_ERROR(ForEachField(proto, [&](uint32_t number, int wire,
                                          WireReader& r) -> absl::StatusOr<bool> {
    if (wire != 2 || number < 1 || number > 3) return false;
    ASSIGN_OR_RETURN(std::string_view body, r.Bytes());
    if (number == 1) {
      std::string piece;
      float score = 0.0f;
      int type = kNormal;
      RETURN_IF_ERROR(ForEachField(body, [&](uint32_t n, int w,
                                             WireReader& f) -> absl::StatusOr<bool> {
        if (n == 1 && w == 2) {
          ASSIGN_OR_RETURN(std::string_view s, f.Bytes());
          piece.assign(s);
        } else if (n == 2 && w == 5) {
          ASSIGN_OR_RETURN(uint32_t bits, f.Fixed32());
          std::memcpy(&score, &bits, sizeof(score));
        } else if (n == 3 && w == 0) {
          ASSIGN_OR_RETURN(uint64_t v, f.Varint());
          type = static_cast<int>(v);
        } else {
          return false;
        }
        return true;
      }));
      t->pieces_.push_back(std::move(piece));
      t->scores_.push_back(score);
      t->types_.push_back(type);
    } else if (number == 2) {
      RETURN_IF_ERROR(ForEachField(body, [&](uint32_t n, int w,
                                             WireReader& f) -> absl::StatusOr<bool> {
        if (w != 0) return false;
        ASSIGN_OR_RETURN(uint64_t v, f.Varint());
        const int iv = static_cast<int>(static_cast<int32_t>(v));
        switch (n) {
          case 3: t->model_type_ = iv; break;
          case 24: t->treat_whitespace_as_suffix_ = v != 0; break;
          case 35: t->byte_fallback_ = v != 0; break;
          case 41: t->bos_id_ = iv; break;
          case 42: t->eos_id_ = iv; break;
          case 43: t->pad_id_ = iv; break;
          default: break;
        }
        return true;
      }));
    } else {
      RETURN_IF_ERROR(ForEachField(body, [&](uint32_t n, int w,
                                             WireReader& f) -> absl::StatusOr<bool> {
        if (n == 2 && w == 2) {
          ASSIGN_OR_RETURN(std::string_view s, f.Bytes());
          t->precompiled_charsmap_.assign(s);
          return true;
        }
        if (w != 0 || n < 3 || n > 5) return false;
        ASSIGN_OR_RETURN(uint64_t v, f.Varint());
        if (n == 3) t->add_dummy_prefix_ = v != 0;
        if (n == 4) t->remove_extra_whitespaces_ = v != 0;
        if (n == 5) t->escape_whitespaces_ = v != 0;
        return true;
      }));
    }
    return true;
  }));
  RETURN_IF_ERROR(t->Init());
  return t;
}

absl::Status GemmaTokenizer::Init() {
  constexpr int kBpe = 2;
  if (model_type_ != kBpe) {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer.model: model type ", model_type_, " (only BPE is supported)"));
  }
  if (!precompiled_charsmap_.empty()) {
    return absl::UnimplementedError(
        "tokenizer.model: a precompiled normalisation charsmap is not supported");
  }
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const std::string& piece = pieces_[i];
    const int type = types_[i];
    if (piece.empty()) return absl::InvalidArgumentError("tokenizer.model: empty piece");
    const bool normal = type == kNormal || type == kUserDefined || type == kUnused;
    if (!(normal ? normal_ : reserved_).emplace(piece, static_cast<int>(i)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.model: piece '", piece, "' defined twice"));
    }
    if (type == kUserDefined) user_defined_.insert(piece);
    if (type == kUnknown) {
      if (unk_id_ >= 0) return absl::InvalidArgumentError("tokenizer.model: two unknown pieces");
      unk_id_ = static_cast<int>(i);
    }
    if (type == kByte) {
      // "<0xXX>" with two upper-case hex digits, as SentencePiece's PieceToByte. Not sscanf's
      // %2X: it takes a sign, and "<0x-C>" gave byte 4294967284, written past byte_ids_ (found
      // by fuzz/gemma_tokenizer_fuzzer).
      const auto hex = [](char c) {
        return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      };
      if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>' ||
          hex(piece[3]) < 0 || hex(piece[4]) < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.model: bad byte piece '", piece, "'"));
      }
      byte_ids_[hex(piece[3]) * 16 + hex(piece[4])] = static_cast<int>(i);
    }
  }
  if (unk_id_ < 0) return absl::InvalidArgumentError("tokenizer.model: no unknown piece");
  if (byte_fallback_ && std::count(std::begin(byte_ids_), std::end(byte_ids_), -1) > 0) {
    return absl::InvalidArgumentError(
        "tokenizer.model: byte_fallback without all 256 byte pieces");
  }
  for (std::string_view s : user_defined_) user_defined_lengths_.push_back(s.size());
  std::sort(user_defined_lengths_.begin(), user_defined_lengths_.end(), std::greater<size_t>());
  user_defined_lengths_.erase(
      std::unique(user_defined_lengths_.begin(), user_defined_lengths_.end()),
      user_defined_lengths_.end());
  const int n = static_cast<int>(pieces_.size());
  for (auto [name, id] : {std::pair{"bos", bos_id_}, {"eos", eos_id_}, {"pad", pad_id_}}) {
    // -1 is SentencePiece's "none"; any other id must be a piece.
    if (id < -1 || id >= n) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.model: ", name, "_id ", id,
                                                     " is outside the ", n, " pieces"));
    }
  }
  // EncodePrompts pads with the pad id, else the eos id: one must exist, or padding would be
  // id -1 (found by fuzz/gemma_tokenizer_fuzzer).
  if (pad_id_ < 0 && eos_id_ < 0) {
    return absl::InvalidArgumentError(
        "tokenizer.model: neither a pad_id nor an eos_id to pad prompts with");
  }
  return absl::OkStatus();
}

size_t GemmaTokenizer::MatchUserDefined(std::string_view text) const {
  for (size_t len : user_defined_lengths_) {
    if (len <= text.size() && user_defined_.count(text.substr(0, len)) > 0) return len;
  }
  return 0;
}

int GemmaTokenizer::PieceToId(std::string_view piece) const {
  if (auto it = reserved_.find(piece); it != reserved_.end()) return it->second;
  if (auto it = normal_.find(piece); it != normal_.end()) return it->second;
  return unk_id_;
}

std::string GemmaTokenizer::Normalize(std::string_view input) const {
  std::string out;
  // Leading spaces go first when extra whitespace is removed.
  if (remove_extra_whitespaces_) {
    while (!input.empty() && input[0] == ' ' && MatchUserDefined(input) == 0) {
      input.remove_prefix(1);
    }
  }
  if (input.empty()) return out;
  auto add_space = [&] { out += escape_whitespaces_ ? std::string(kSpaceSymbol) : " "; };
  if (!treat_whitespace_as_suffix_ && add_dummy_prefix_) add_space();
  bool prev_space = remove_extra_whitespaces_;
  while (!input.empty()) {
    // One normalisation unit: a user-defined symbol, a well-formed character, or one malformed
    // byte that becomes U+FFFD.
    size_t consumed = MatchUserDefined(input);
    std::string_view unit;
    if (consumed > 0) {
      unit = input.substr(0, consumed);
    } else {
      consumed = ValidCharLen(input);
      unit = consumed > 0 ? input.substr(0, consumed) : kReplacementChar;
      if (consumed == 0) consumed = 1;
    }
    while (prev_space && !unit.empty() && unit[0] == ' ') unit.remove_prefix(1);
    if (!unit.empty()) {
      for (char c : unit) {
        if (escape_whitespaces_ && c == ' ') {
          out += kSpaceSymbol;
        } else {
          out += c;
        }
      }
      prev_space = unit.back() == ' ';
    }
    input.remove_prefix(consumed);
    if (!remove_extra_whitespaces_) prev_space = false;
  }
  if (remove_extra_whitespaces_) {
    const std::string_view space = escape_whitespaces_ ? kSpaceSymbol : " ";
    while (out.size() >= space.size() &&
           std::string_view(out).substr(out.size() - space.size()) == space) {
      out.resize(out.size() - space.size());
    }
  }
  if (treat_whitespace_as_suffix_ && add_dummy_prefix_) add_space();
  return out;
}

std::vector<std::pair<std::string_view, int>> GemmaTokenizer::EncodeNormalized(
    std::string_view normalized) const {
  struct Symbol {
    int prev;
    int next;
    bool freeze;  // user-defined symbols are never merged
    std::string_view piece;
  };
  struct SymbolPair {
    int left;
    int right;
    float score;
    size_t size;
  };
  std::vector<Symbol> symbols;
  std::vector<SymbolPair> pairs;
  // Best score first, then the leftmost; the same heap discipline as the reference.
  auto worse = [&pairs](int a, int b) {
    const SymbolPair &x = pairs[a], &y = pairs[b];
    return x.score < y.score || (x.score == y.score && x.left > y.left);
  };
  std::priority_queue<int, std::vector<int>, decltype(worse)> agenda(worse);
  // Merged unused pieces → the two pieces they were made of, for resegmentation.
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;

  auto maybe_add = [&](int left, int right) {
    if (left == -1 || right == -1 || symbols[left].freeze || symbols[right].freeze) return;
    const std::string_view piece(symbols[left].piece.data(),
                                 symbols[left].piece.size() + symbols[right].piece.size());
    auto it = normal_.find(piece);
    if (it == normal_.end()) return;
    pairs.push_back({left, right, scores_[it->second], piece.size()});
    agenda.push(static_cast<int>(pairs.size()) - 1);
    if (types_[it->second] == kUnused) {
      rev_merge[piece] = {symbols[left].piece, symbols[right].piece};
    }
  };

  for (std::string_view rest = normalized; !rest.empty();) {
    size_t len = MatchUserDefined(rest);
    const bool freeze = len > 0;
    if (!freeze) len = std::min(rest.size(), OneCharLen(rest[0]));
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, rest.size() == len ? -1 : index + 1, freeze, rest.substr(0, len)});
    rest.remove_prefix(len);
  }
  if (symbols.empty()) return {};
  for (size_t i = 1; i < symbols.size(); ++i) maybe_add(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!agenda.empty()) {
    const SymbolPair top = pairs[agenda.top()];
    agenda.pop();
    Symbol& l = symbols[top.left];
    Symbol& r = symbols[top.right];
    // Stale entry: one side was merged away or changed since.
    if (l.piece.empty() || r.piece.empty() || l.piece.size() + r.piece.size() != top.size) {
      continue;
    }
    l.piece = std::string_view(l.piece.data(), l.piece.size() + r.piece.size());
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = top.left;
    r.piece = std::string_view();
    maybe_add(l.prev, top.left);
    maybe_add(top.left, l.next);
  }

  std::vector<std::pair<std::string_view, int>> out;
  std::function<void(std::string_view)> resegment = [&](std::string_view w) {
    const int id = PieceToId(w);
    if (id == -1 || types_[id] != kUnused) {
      out.emplace_back(w, id);
      return;
    }
    auto it = rev_merge.find(w);
    if (it == rev_merge.end()) {
      out.emplace_back(w, id);
      return;
    }
    resegment(it->second.first);
    resegment(it->second.second);
  };
  for (int i = 0; i != -1; i = symbols[i].next) resegment(symbols[i].piece);
  return out;
}

void GemmaTokenizer::Encode(std::string_view text, std::vector<int>* ids,
                            std::vector<std::string>* pieces) const {
  const std::string normalized = Normalize(text);
  bool prev_unknown = false;
  for (const auto& [w, id] : EncodeNormalized(normalized)) {
    const bool unknown = types_[id] == kUnknown;
    if (types_[id] == kControl) {
      ids->push_back(id);
      if (pieces != nullptr) pieces->emplace_back(w);
    } else if (unknown && byte_fallback_) {
      for (char c : w) {
        const unsigned char b = static_cast<unsigned char>(c);
        ids->push_back(byte_ids_[b]);
        if (pieces != nullptr) pieces->push_back(ByteToPiece(b));
      }
    } else if (unknown && prev_unknown) {
      // A run of unknown pieces stays one unknown token.
      if (pieces != nullptr) pieces->back() += w;
    } else {
      ids->push_back(id);
      if (pieces != nullptr) pieces->emplace_back(w);
    }
    prev_unknown = unknown;
  }
}

std::vector<int> GemmaTokenizer::Encode(std::string_view text) const {
  std::vector<int> ids;
  Encode(text, &ids, nullptr);
  return ids;
}

std::vector<std::string> GemmaTokenizer::EncodeAsPieces(std::string_view text) const {
  std::vector<int> ids;
  std::vector<std::string> pieces;
  Encode(text, &ids, &pieces);
  return pieces;
}

PromptTokens GemmaTokenizer::EncodePrompts(const std::vector<std::string>& prompts,
                                           int64_t max_length) const {
  PromptTokens out;
  out.num_prompts = static_cast<int64_t>(prompts.size());
  out.max_length = max_length;
  const int64_t pad = pad_id_ >= 0 ? pad_id_ : eos_id_;
  out.input_ids.assign(static_cast<size_t>(out.num_prompts * max_length), pad);
  out.attention_mask.assign(out.input_ids.size(), 0);
  for (int64_t row = 0; row < out.num_prompts; ++row) {
    std::vector<int64_t> ids;
    if (bos_id_ >= 0) ids.push_back(bos_id_);
    for (int id : Encode(StripPythonWhitespace(prompts[row]))) ids.push_back(id);
    if (static_cast<int64_t>(ids.size()) > max_length) ids.resize(static_cast<size_t>(max_length));
    const int64_t start = row * max_length + max_length - static_cast<int64_t>(ids.size());
    for (size_t j = 0; j < ids.size(); ++j) {
      out.input_ids[start + j] = ids[j];
      out.attention_mask[start + j] = 1;
    }
  }
  return out;
}

}  // namespace diffmesh::models::ltx2
