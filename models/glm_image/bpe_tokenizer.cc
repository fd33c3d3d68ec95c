#include "models/glm_image/bpe_tokenizer.h"

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <fstream>
#include <queue>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// UTF-8.

// Decodes valid UTF-8 into code points; offsets[i] is the byte offset of cps[i], and
// offsets.back() == s.size(). False on any ill-formed sequence (overlong forms, surrogates and
// values past U+10FFFF included).
bool DecodeUtf8(std::string_view s, std::vector<char32_t>& cps, std::vector<size_t>& offsets) {
  cps.clear();
  offsets.clear();
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char b0 = static_cast<unsigned char>(s[i]);
    offsets.push_back(i);
    if (b0 < 0x80) {
      cps.push_back(b0);
      ++i;
      continue;
    }
    size_t len;
    char32_t c;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
      c = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      c = b0 & 0x0F;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      c = b0 & 0x07;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      const unsigned char b = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return false;
      c = (c << 6) | (b & 0x3F);
    }
    cps.push_back(c);
    i += len;
  }
  offsets.push_back(n);
  return true;
}

void AppendUtf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

// Bytes → UTF-8 text as Rust's String::from_utf8_lossy: each maximal subpart of an ill-formed
// sequence (a lead byte plus the continuation bytes valid so far) becomes one U+FFFD.
std::string LossyUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(static_cast<char>(b0));
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    }
    size_t k = 1;
    if (len > 0) {
      for (; k < len && i + k < n; ++k) {
        const unsigned char b = static_cast<unsigned char>(s[i + k]);
        if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
      }
    }
    if (len > 0 && k == len) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD for bytes [i, i + k)
      i += k;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Character classes. The Split regexes run on Oniguruma in `tokenizers`; the added-token flags
// use Rust's regex crate. Both are Unicode-aware, mapped here onto ICU properties.

bool IsLetter(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_L_MASK) != 0; }
bool IsNumber(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0; }
// Oniguruma's Unicode \s: U+0009..U+000D, U+0085 and the Zl, Zp, Zs categories.
bool IsRegexSpace(char32_t c) {
  if ((c >= 0x09 && c <= 0x0D) || c == 0x85) return true;
  return (U_GET_GC_MASK(static_cast<UChar32>(c)) & (U_GC_ZL_MASK | U_GC_ZP_MASK | U_GC_ZS_MASK)) !=
         0;
}
// [^\s\p{L}\p{N}]
bool IsOther(char32_t c) { return !IsRegexSpace(c) && !IsLetter(c) && !IsNumber(c); }
bool IsCrLf(char32_t c) { return c == '\r' || c == '\n'; }
// Rust regex \s (White_Space) and \w (Alphabetic, M, Nd, Pc, Join_Control).
bool IsRustSpace(char32_t c) {
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}
bool IsRustWord(char32_t c) {
  const UChar32 u = static_cast<UChar32>(c);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL) ||
         (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

// ---------------------------------------------------------------------------------------------
// Split-regex scanners. Each returns the length in code points of the match the regex finds at
// position i; every supported pattern matches some non-empty prefix at every position, so a
// left-to-right scan with these lengths is exactly find_iter's sequence of matches.

template <typename Pred>
size_t RunEnd(const std::vector<char32_t>& c, size_t i, Pred pred) {
  while (i < c.size() && pred(c[i])) ++i;
  return i;
}

// 's|'t|'re|'ve|'m|'ll|'d, case-insensitively for (?i:...). Oniguruma folds U+017F (long s)
// to 's'; no other character folds to these letters.
size_t MatchContraction(const std::vector<char32_t>& c, size_t i, bool ignore_case) {
  const size_t n = c.size();
  if (c[i] != '\'' || i + 1 >= n) return 0;
  auto fold = [ignore_case](char32_t x) -> char32_t {
    if (!ignore_case) return x;
    if (x >= 'A' && x <= 'Z') return x + ('a' - 'A');
    if (x == 0x17F) return 's';
    return x;
  };
  const char32_t a = fold(c[i + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < n) {
    const char32_t b = fold(c[i + 2]);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

// \s+(?!\S)|\s+ : the whitespace alternatives both patterns end with.
size_t MatchTrailingSpace(const std::vector<char32_t>& c, size_t i) {
  const size_t j = RunEnd(c, i, IsRegexSpace);
  if (j == i) return 0;
  if (j == c.size()) return j - i;  // the look-ahead holds at the end of the text
  // Otherwise \s+ backs off one character so that (?!\S) sees whitespace; with a single
  // whitespace character that fails and the plain \s+ takes it.
  return j - i >= 2 ? j - i - 1 : j - i;
}

// GPT-4 / GLM-4 / Llama-3:
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//    ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// (max_digits 1 for the \p{N} variant.)
size_t MatchGpt4(const std::vector<char32_t>& c, size_t i, size_t max_digits) {
  const size_t n = c.size();
  if (size_t len = MatchContraction(c, i, /*ignore_case=*/true)) return len;
  const char32_t c0 = c[i];
  // [^\r\n\p{L}\p{N}]?\p{L}+ : with the optional character when a letter follows it.
  if (!IsCrLf(c0) && !IsLetter(c0) && !IsNumber(c0) && i + 1 < n && IsLetter(c[i + 1])) {
    return RunEnd(c, i + 1, IsLetter) - i;
  }
  if (IsLetter(c0)) return RunEnd(c, i, IsLetter) - i;
  // \p{N}{1,max}
  if (IsNumber(c0)) return std::min(RunEnd(c, i, IsNumber) - i, max_digits);
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  size_t j = i;
  if (c0 == ' ' && i + 1 < n && IsOther(c[i + 1])) j = i + 1;
  if (IsOther(c[j])) {
    const size_t k = RunEnd(c, j, IsOther);
    return RunEnd(c, k, IsCrLf) - i;
  }
  // \s*[\r\n]+ : \s* backs off to the last newline of the whitespace run, [\r\n]+ takes it.
  const size_t ws_end = RunEnd(c, i, IsRegexSpace);
  for (size_t k = ws_end; k > i; --k) {
    if (IsCrLf(c[k - 1])) return k - i;
  }
  return MatchTrailingSpace(c, i);
}

// GPT-2 (ByteLevel's own regex):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t MatchGpt2(const std::vector<char32_t>& c, size_t i) {
  const size_t n = c.size();
  if (size_t len = MatchContraction(c, i, /*ignore_case=*/false)) return len;
  for (bool (*cls)(char32_t) : {IsLetter, IsNumber, IsOther}) {
    if (c[i] == ' ' && i + 1 < n && cls(c[i + 1])) return RunEnd(c, i + 1, cls) - i;
    if (cls(c[i])) return RunEnd(c, i, cls) - i;
  }
  return MatchTrailingSpace(c, i);
}

// Appends the pieces of `text` cut at the matches of `pattern` (behavior Isolated: every match
// is a piece; the scanners leave no gaps).
void SplitWith(BpeTokenizer::SplitPattern pattern, const std::string& text,
               std::vector<std::string>& out) {
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  DecodeUtf8(text, cps, offsets);  // pieces come from validated input
  size_t i = 0;
  while (i < cps.size()) {
    size_t len = 0;
    switch (pattern) {
      case BpeTokenizer::SplitPattern::kGpt4:
        len = MatchGpt4(cps, i, 3);
        break;
      case BpeTokenizer::SplitPattern::kGpt4SingleDigit:
        len = MatchGpt4(cps, i, 1);
        break;
      case BpeTokenizer::SplitPattern::kGpt2:
        len = MatchGpt2(cps, i);
        break;
    }
    len = std::max<size_t>(len, 1);  // the scanners never return 0; guard the loop anyway
    out.push_back(text.substr(offsets[i], offsets[i + len] - offsets[i]));
    i += len;
  }
}

// ---------------------------------------------------------------------------------------------
// Loading helpers.

// Regexes of tokenizer.json Split pre-tokenizers that the scanners implement, as the files
// write them (the JSON text unescaped).
std::optional<BpeTokenizer::SplitPattern> KnownPattern(const std::string& regex) {
  static const std::string kGpt4 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const std::string kGpt4SingleDigit =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const std::string kGpt2 =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  if (regex == kGpt4) return BpeTokenizer::SplitPattern::kGpt4;
  if (regex == kGpt4SingleDigit) return BpeTokenizer::SplitPattern::kGpt4SingleDigit;
  if (regex == kGpt2) return BpeTokenizer::SplitPattern::kGpt2;
  return std::nullopt;
}

void TrieInsert(std::vector<BpeTokenizer::TrieNode>& trie, const std::string& pattern,
                int32_t token) {
  if (trie.empty()) trie.emplace_back();
  int32_t node = 0;
  for (unsigned char b : pattern) {
    auto& next = trie[node].next;
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(b, INT32_MIN));
    if (it != next.end() && it->first == b) {
      node = it->second;
    } else {
      const int32_t child = static_cast<int32_t>(trie.size());
      next.insert(it, {b, child});
      trie.emplace_back();  // invalidates `next`; not used afterwards
      node = child;
    }
  }
  trie[node].token = token;
}

int32_t TrieChild(const std::vector<BpeTokenizer::TrieNode>& trie, int32_t node, unsigned char b) {
  const auto& next = trie[node].next;
  auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(b, INT32_MIN));
  return (it != next.end() && it->first == b) ? it->second : -1;
}

absl::StatusOr<std::string> IcuNormalize(BpeTokenizer::NormalizerKind kind, std::string_view text) {
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* norm = nullptr;
  switch (kind) {
    case BpeTokenizer::NormalizerKind::kNfc:
      norm = unorm2_getNFCInstance(&err);
      break;
    case BpeTokenizer::NormalizerKind::kNfd:
      norm = unorm2_getNFDInstance(&err);
      break;
    case BpeTokenizer::NormalizerKind::kNfkc:
      norm = unorm2_getNFKCInstance(&err);
      break;
    case BpeTokenizer::NormalizerKind::kNfkd:
      norm = unorm2_getNFKDInstance(&err);
      break;
  }
  if (U_FAILURE(err))
    return absl::InternalError(absl::StrCat("ICU normalizer: ", u_errorName(err)));
  // UTF-8 → UTF-16 → normalized UTF-16 → UTF-8, each with a preflight for the length.
  int32_t len16 = 0;
  err = U_ZERO_ERROR;
  u_strFromUTF8(nullptr, 0, &len16, text.data(), static_cast<int32_t>(text.size()), &err);
  std::u16string in(static_cast<size_t>(len16), u'\0');
  err = U_ZERO_ERROR;
  u_strFromUTF8(reinterpret_cast<UChar*>(in.data()), len16, nullptr, text.data(),
                static_cast<int32_t>(text.size()), &err);
  if (U_FAILURE(err)) return absl::InternalError(absl::StrCat("ICU UTF-8: ", u_errorName(err)));
  err = U_ZERO_ERROR;
  const int32_t out_len =
      unorm2_normalize(norm, reinterpret_cast<const UChar*>(in.data()), len16, nullptr, 0, &err);
  std::u16string out(static_cast<size_t>(out_len), u'\0');
  err = U_ZERO_ERROR;
  unorm2_normalize(norm, reinterpret_cast<const UChar*>(in.data()), len16,
                   reinterpret_cast<UChar*>(out.data()), out_len, &err);
  if (U_FAILURE(err)) return absl::InternalError(absl::StrCat("ICU normalize: ", u_errorName(err)));
  int32_t len8 = 0;
  err = U_ZERO_ERROR;
  u_strToUTF8(nullptr, 0, &len8, reinterpret_cast<const UChar*>(out.data()), out_len, &err);
  std::string result(static_cast<size_t>(len8), '\0');
  err = U_ZERO_ERROR;
  u_strToUTF8(result.data(), len8, nullptr, reinterpret_cast<const UChar*>(out.data()), out_len,
              &err);
  if (U_FAILURE(err)) return absl::InternalError(absl::StrCat("ICU UTF-8: ", u_errorName(err)));
  return result;
}

// The GPT-2 byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68
// bytes map to U+0100.. in byte order.
std::array<char32_t, 256> ByteToChar() {
  std::array<char32_t, 256> map{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    map[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return map;
}

absl::Status Unsupported(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": unsupported tokenizer.json ", what));
}

// A token id, `where` in the file: an integer in 0..2^32-1 as the tokenizers library's u32 ids
// (json's get<int64_t> of a float such as 1e300 was undefined; the merge table packs two ids in
// 64 bits).
absl::StatusOr<int64_t> TokenId(const nlohmann::json& v, const std::string& source,
                                const std::string& where) {
  constexpr uint64_t kMax = 0xFFFFFFFFu;
  const bool in_range =
      v.is_number_unsigned() ? v.get<uint64_t>() <= kMax
                             : v.is_number_integer() && v.get<int64_t>() >= 0 &&
                                   static_cast<uint64_t>(v.get<int64_t>()) <= kMax;
  if (!in_range) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": malformed tokenizer.json: ", where,
                                                   " is ", v.dump(),
                                                   ", not a token id (an integer in 0..",
                                                   kMax, ")"));
  }
  return v.is_number_unsigned() ? static_cast<int64_t>(v.get<uint64_t>()) : v.get<int64_t>();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Loading.

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open tokenizer file"));
  std::stringstream buf;
  buf << in.rdbuf();
  return FromJson(buf.str(), path);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromJson(const std::string& json_text,
                                                                     const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  // nlohmann reports wrong types and missing keys as exceptions; each becomes an error naming
  // the file.
  try {
    if (!j.is_object()) return Unsupported(source, "document (not a JSON object)");
    // ---- model
    if (!j.contains("model") || !j["model"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": no \"model\" object"));
    }
    const json& m = j["model"];
    const std::string type = m.value("type", std::string("BPE"));
    if (type != "BPE") return Unsupported(source, absl::StrCat("model.type \"", type, "\""));
    if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() > 0.0) {
      return Unsupported(source, "model.dropout (sampling at encode time)");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (m.contains(key) && !m[key].is_null() && !m[key].get<std::string>().empty()) {
        return Unsupported(source, absl::StrCat("model.", key));
      }
    }
    if (!m.contains("vocab") || !m["vocab"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": model.vocab is not an object"));
    }
    for (const auto& [token, id] : m["vocab"].items()) {
      ASSIGN_OR_RETURN(const int64_t i,
                       TokenId(id, source, absl::StrCat("model.vocab[\"", token, "\"]")));
      t->vocab_[token] = i;
      t->vocab_r_[i] = token;
    }
    t->fuse_unk_ = m.value("fuse_unk", false);
    t->byte_fallback_ = m.value("byte_fallback", false);
    t->ignore_merges_ = m.value("ignore_merges", false);
    if (m.contains("unk_token") && !m["unk_token"].is_null()) {
      const std::string unk = m["unk_token"].get<std::string>();
      auto it = t->vocab_.find(unk);
      if (it == t->vocab_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": model.unk_token \"", unk, "\" is not in the vocabulary"));
      }
      t->unk_id_ = it->second;
    }
    for (int b = 0; b < 256; ++b) {
      auto it = t->vocab_.find(absl::StrFormat("<0x%02X>", b));
      t->byte_fallback_ids_[b] = it == t->vocab_.end() ? -1 : it->second;
    }
    if (!m.contains("merges") || !m["merges"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": model.merges is not an array"));
    }
    int32_t rank = 0;
    for (const json& merge : m["merges"]) {
      std::string a, b;
      if (merge.is_string()) {  // "a b" (older files)
        const std::string s = merge.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat(source, ": merge ", rank, " \"", s, "\" is not two tokens"));
        }
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (merge.is_array() && merge.size() == 2) {  // ["a", "b"]
        a = merge[0].get<std::string>();
        b = merge[1].get<std::string>();
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": merge ", rank, " is neither \"a b\" nor [\"a\", \"b\"]"));
      }
      auto ia = t->vocab_.find(a), ib = t->vocab_.find(b), iab = t->vocab_.find(a + b);
      if (ia == t->vocab_.end() || ib == t->vocab_.end() || iab == t->vocab_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": merge ", rank, " (\"", a,
                                                       "\", \"", b,
                                                       "\") uses a token not in the vocabulary"));
      }
      const uint64_t key =
          (static_cast<uint64_t>(ia->second) << 32) | static_cast<uint32_t>(ib->second);
      t->merges_.emplace(key, std::make_pair(rank, iab->second));  // first rank wins, as in HF
      ++rank;
    }

    // ---- added tokens
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
      for (const json& a : j.at("added_tokens")) {
        AddedToken tok;
        ASSIGN_OR_RETURN(tok.id, TokenId(a.at("id"), source, "added_tokens[].id"));
        tok.content = a.at("content").get<std::string>();
        tok.special = a.value("special", false);
        tok.lstrip = a.value("lstrip", false);
        tok.rstrip = a.value("rstrip", false);
        tok.single_word = a.value("single_word", false);
        tok.normalized = a.value("normalized", !tok.special);
        if (tok.content.empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat(source, ": added token ", tok.id, " is empty"));
        }
        t->added_by_content_[tok.content] = tok.id;
        t->added_by_id_[tok.id] = t->added_.size();
        if (tok.special) t->special_contents_.insert(tok.content);
        t->added_.push_back(std::move(tok));
      }
    }

    // ---- normalizer
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      std::vector<const json*> steps;
      const json& n = j["normalizer"];
      if (n.at("type") == "Sequence") {
        for (const json& s : n.at("normalizers")) steps.push_back(&s);
      } else {
        steps.push_back(&n);
      }
      for (const json* s : steps) {
        const std::string nt = s->at("type").get<std::string>();
        if (nt == "NFC")
          t->normalizers_.push_back(NormalizerKind::kNfc);
        else if (nt == "NFD")
          t->normalizers_.push_back(NormalizerKind::kNfd);
        else if (nt == "NFKC")
          t->normalizers_.push_back(NormalizerKind::kNfkc);
        else if (nt == "NFKD")
          t->normalizers_.push_back(NormalizerKind::kNfkd);
        else
          return Unsupported(source, absl::StrCat("normalizer \"", nt, "\""));
      }
    }
    // Tries; normalized=true tokens are matched in their normalized form.
    for (size_t i = 0; i < t->added_.size(); ++i) {
      const AddedToken& tok = t->added_[i];
      if (tok.normalized) {
        std::string pattern = tok.content;
        for (NormalizerKind k : t->normalizers_) {
          ASSIGN_OR_RETURN(pattern, IcuNormalize(k, pattern));
        }
        TrieInsert(t->normalized_trie_, pattern, static_cast<int32_t>(i));
      } else {
        TrieInsert(t->raw_trie_, tok.content, static_cast<int32_t>(i));
      }
    }

    // ---- pre-tokenizer: [Split...] then ByteLevel
    if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null()) {
      return Unsupported(source, "pre_tokenizer null (a byte-level BPE needs ByteLevel)");
    }
    std::vector<const json*> steps;
    const json& p = j["pre_tokenizer"];
    if (p.at("type") == "Sequence") {
      for (const json& s : p.at("pretokenizers")) steps.push_back(&s);
    } else {
      steps.push_back(&p);
    }
    bool byte_level = false;
    for (const json* s : steps) {
      const std::string pt = s->at("type").get<std::string>();
      if (byte_level)
        return Unsupported(source, absl::StrCat("pre_tokenizer \"", pt, "\" after ByteLevel"));
      if (pt == "Split") {
        const json& pattern = s->at("pattern");
        if (!pattern.contains("Regex")) return Unsupported(source, "Split pattern (String)");
        const std::string regex = pattern["Regex"].get<std::string>();
        auto known = KnownPattern(regex);
        if (!known) return Unsupported(source, absl::StrCat("Split regex ", regex));
        if (s->value("behavior", std::string("Isolated")) != "Isolated" ||
            s->value("invert", false)) {
          return Unsupported(source, "Split behavior (only Isolated, invert false)");
        }
        t->splits_.push_back(*known);
      } else if (pt == "ByteLevel") {
        byte_level = true;
        t->byte_level_prefix_space_ = s->value("add_prefix_space", true);
        t->byte_level_regex_ = s->value("use_regex", true);
      } else {
        return Unsupported(source, absl::StrCat("pre_tokenizer \"", pt, "\""));
      }
    }
    if (!byte_level) return Unsupported(source, "pre_tokenizer without ByteLevel");

    // ---- post-processor
    std::vector<const json*> post;
    if (j.contains("post_processor") && !j["post_processor"].is_null()) {
      const json& pp = j["post_processor"];
      if (pp.at("type") == "Sequence") {
        for (const json& s : pp.at("processors")) post.push_back(&s);
      } else {
        post.push_back(&pp);
      }
    }
    for (const json* s : post) {
      const std::string pt = s->at("type").get<std::string>();
      if (pt == "ByteLevel") continue;  // offsets only
      PostStep step;
      if (pt == "TemplateProcessing") {
        bool seen_a = false;
        for (const json& piece : s->at("single")) {
          if (piece.contains("Sequence")) {
            if (piece["Sequence"].at("id") != "A")
              return Unsupported(source, "template sequence other than $A");
            seen_a = true;
          } else if (piece.contains("SpecialToken")) {
            const std::string name = piece["SpecialToken"].at("id").get<std::string>();
            const json& specials = s->at("special_tokens");
            if (!specials.contains(name)) {
              return absl::InvalidArgumentError(
                  absl::StrCat(source, ": post_processor template names \"", name,
                               "\" without special_tokens entry"));
            }
            for (const json& id : specials[name].at("ids")) {
              ASSIGN_OR_RETURN(const int64_t i,
                               TokenId(id, source, "post_processor special_tokens ids"));
              (seen_a ? step.after : step.before).push_back(i);
            }
          } else {
            return Unsupported(source, "template piece");
          }
        }
      } else if (pt == "RobertaProcessing" || pt == "BertProcessing") {
        ASSIGN_OR_RETURN(const int64_t cls, TokenId(s->at("cls").at(1), source, "cls id"));
        ASSIGN_OR_RETURN(const int64_t sep, TokenId(s->at("sep").at(1), source, "sep id"));
        step.before.push_back(cls);
        step.after.push_back(sep);
      } else {
        return Unsupported(source, absl::StrCat("post_processor \"", pt, "\""));
      }
      // Every id it adds is a token (found by fuzz/bpe_tokenizer_fuzzer: an unknown id went
      // into the encoding, past the text encoder's embedding table).
      for (const auto* ids : {&step.before, &step.after}) {
        for (int64_t id : *ids) {
          if (!t->IdToToken(id).has_value()) {
            return absl::InvalidArgumentError(
                absl::StrCat(source, ": post_processor \"", pt, "\" adds id ", id,
                             ", which is neither in model.vocab nor in added_tokens"));
          }
        }
      }
      t->post_.push_back(std::move(step));
    }

    // ---- decoder
    if (j.contains("decoder") && !j["decoder"].is_null()) {
      const json& d = j["decoder"];
      std::vector<const json*> dsteps;
      if (d.at("type") == "Sequence") {
        for (const json& s : d.at("decoders")) dsteps.push_back(&s);
      } else {
        dsteps.push_back(&d);
      }
      if (dsteps.size() != 1 || dsteps[0]->at("type") != "ByteLevel") {
        return Unsupported(source, "decoder (only ByteLevel)");
      }
      t->byte_level_decoder_ = true;
    } else {
      t->byte_level_decoder_ = false;
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": malformed tokenizer.json: ", e.what()));
  }

  const std::array<char32_t, 256> byte_to_char = ByteToChar();
  for (int b = 0; b < 256; ++b) {
    AppendUtf8(byte_to_char[b], t->byte_chars_[b]);
    t->char_bytes_[byte_to_char[b]] = static_cast<unsigned char>(b);
    auto it = t->vocab_.find(t->byte_chars_[b]);
    t->byte_char_ids_[b] = it == t->vocab_.end() ? -1 : it->second;
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Encoding.

void BpeTokenizer::SplitOnAddedTokens(const std::vector<TrieNode>& trie,
                                      std::vector<Piece>& pieces) const {
  if (trie.empty()) return;
  std::vector<Piece> out;
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  for (Piece& piece : pieces) {
    if (piece.added_id >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    const std::string& s = piece.text;
    const size_t n = s.size();
    size_t start_offset = 0;
    size_t pos = 0;
    while (pos < n) {
      // Leftmost-longest: the longest token starting at the first position where one matches.
      int32_t node = 0, best = -1;
      size_t best_end = 0;
      for (size_t k = pos; k < n; ++k) {
        node = TrieChild(trie, node, static_cast<unsigned char>(s[k]));
        if (node < 0) break;
        if (trie[node].token >= 0) {
          best = trie[node].token;
          best_end = k + 1;
        }
      }
      if (best < 0) {
        ++pos;
        continue;
      }
      size_t start = pos, stop = best_end;
      pos = best_end;  // the next match is searched after this one, kept or not
      const AddedToken& tok = added_[best];
      if (tok.single_word) {
        // Kept only where neither neighbour is a word character.
        bool ok = true;
        if (start > 0) {
          DecodeUtf8(std::string_view(s).substr(0, start), cps, offsets);
          ok = !IsRustWord(cps.back());
        }
        if (ok && stop < n) {
          DecodeUtf8(std::string_view(s).substr(stop), cps, offsets);
          ok = !IsRustWord(cps.front());
        }
        if (!ok) continue;
      }
      if (tok.lstrip && start > 0) {  // swallow the whitespace before, back to the last split
        DecodeUtf8(std::string_view(s).substr(0, start), cps, offsets);
        size_t k = cps.size();
        while (k > 0 && IsRustSpace(cps[k - 1])) --k;
        start = std::max(offsets[k], start_offset);
      }
      if (tok.rstrip && stop < n) {  // and the whitespace after
        DecodeUtf8(std::string_view(s).substr(stop), cps, offsets);
        size_t k = 0;
        while (k < cps.size() && IsRustSpace(cps[k])) ++k;
        stop += offsets[k];
      }
      start = std::max(start, start_offset);
      if (start_offset < start) out.push_back({s.substr(start_offset, start - start_offset), -1});
      out.push_back({std::string(), tok.id});
      start_offset = stop;
    }
    if (start_offset < n) out.push_back({s.substr(start_offset), -1});
  }
  pieces = std::move(out);
}

std::string BpeTokenizer::Normalize(std::string_view text) const {
  std::string s(text);
  for (NormalizerKind k : normalizers_) {
    auto r = IcuNormalize(k, s);
    if (r.ok()) s = std::move(*r);  // ICU fails only on out-of-memory; keep the text then
  }
  return s;
}

void BpeTokenizer::PreTokenize(std::string_view text, std::vector<std::string>& words) const {
  std::vector<std::string> pieces{std::string(text)};
  for (SplitPattern pattern : splits_) {
    std::vector<std::string> next;
    for (const std::string& p : pieces) SplitWith(pattern, p, next);
    pieces = std::move(next);
  }
  for (std::string& p : pieces) {
    // ByteLevel: a prefix space on every piece that lacks one, then optionally its own regex.
    if (byte_level_prefix_space_ && p[0] != ' ') p.insert(p.begin(), ' ');
    if (byte_level_regex_) {
      SplitWith(SplitPattern::kGpt2, p, words);
    } else {
      words.push_back(std::move(p));
    }
  }
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int64_t>& ids) const {
  if (ignore_merges_) {
    std::string mapped;
    for (unsigned char b : word) mapped += byte_chars_[b];
    auto it = vocab_.find(mapped);
    if (it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  // Initial symbols: one per byte-level character (one per byte), as BPE::merge_word builds them.
  struct Symbol {
    int64_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  auto add = [&sym](int64_t id) {
    const int32_t i = static_cast<int32_t>(sym.size());
    sym.push_back({id, i - 1, i + 1, true});
  };
  int64_t pending_unk = -1;  // an unk symbol not yet added (fuse_unk extends it)
  auto flush_unk = [&]() {
    if (pending_unk >= 0) add(pending_unk);
    pending_unk = -1;
  };
  for (unsigned char b : word) {
    const int64_t id = byte_char_ids_[b];
    if (id >= 0) {
      flush_unk();
      add(id);
      continue;
    }
    if (byte_fallback_) {
      // <0xXX> tokens for the UTF-8 bytes of the missing character, when all exist.
      const std::string& ch = byte_chars_[b];
      bool all = true;
      for (unsigned char cb : ch) all = all && byte_fallback_ids_[cb] >= 0;
      if (all) {
        flush_unk();
        for (unsigned char cb : ch) add(byte_fallback_ids_[cb]);
        continue;
      }
    }
    if (unk_id_) {
      if (!fuse_unk_) flush_unk();
      pending_unk = *unk_id_;
    }
    // Without an unk token the character is dropped, as in `tokenizers`.
  }
  flush_unk();
  if (sym.empty()) return;
  sym.back().next = -1;

  // Word::merge_all: lowest rank first, then leftmost; stale queue entries are skipped.
  struct Merge {
    int32_t pos;
    int32_t rank;
    int64_t new_id;
  };
  auto worse = [](const Merge& a, const Merge& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Merge, std::vector<Merge>, decltype(worse)> queue(worse);
  auto lookup = [this](int64_t a, int64_t b) -> const std::pair<int32_t, int64_t>* {
    auto it = merges_.find((static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i) {
    if (auto* m = lookup(sym[i].id, sym[i + 1].id)) {
      queue.push({static_cast<int32_t>(i), m->first, m->second});
    }
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = sym[left.next];
    const auto* m = lookup(left.id, right.id);
    if (m == nullptr || m->second != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (auto* pm = lookup(sym[left.prev].id, left.id))
        queue.push({left.prev, pm->first, pm->second});
    }
    if (left.next >= 0) {
      if (auto* nm = lookup(left.id, sym[left.next].id))
        queue.push({top.pos, nm->first, nm->second});
    }
  }
  for (const Symbol& s : sym) {
    if (s.alive) ids.push_back(s.id);
  }
}

absl::StatusOr<std::vector<int64_t>> BpeTokenizer::Encode(std::string_view text,
                                                          bool add_special_tokens) const {
  {
    std::vector<char32_t> cps;
    std::vector<size_t> offsets;
    if (!DecodeUtf8(text, cps, offsets)) {
      return absl::InvalidArgumentError("tokenizer input is not valid UTF-8");
    }
  }
  std::vector<Piece> pieces;
  if (!text.empty()) pieces.push_back({std::string(text), -1});
  SplitOnAddedTokens(raw_trie_, pieces);
  if (!normalizers_.empty()) {
    for (Piece& p : pieces) {
      if (p.added_id < 0) p.text = Normalize(p.text);
    }
    pieces.erase(std::remove_if(pieces.begin(), pieces.end(),
                                [](const Piece& p) { return p.added_id < 0 && p.text.empty(); }),
                 pieces.end());
  }
  SplitOnAddedTokens(normalized_trie_, pieces);

  std::vector<int64_t> ids;
  std::vector<std::string> words;
  for (const Piece& p : pieces) {
    if (p.added_id >= 0) {
      ids.push_back(p.added_id);
      continue;
    }
    words.clear();
    PreTokenize(p.text, words);
    for (const std::string& w : words) EncodeWord(w, ids);
  }
  if (add_special_tokens) {
    for (const PostStep& step : post_) {
      std::vector<int64_t> wrapped = step.before;
      wrapped.insert(wrapped.end(), ids.begin(), ids.end());
      wrapped.insert(wrapped.end(), step.after.begin(), step.after.end());
      ids = std::move(wrapped);
    }
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Decoding and lookups.

std::string BpeTokenizer::Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  std::vector<char32_t> cps;
  std::vector<size_t> offsets;
  bool first = true;
  for (int64_t id : ids) {
    std::optional<std::string> token = IdToToken(id);
    if (!token) continue;
    if (skip_special_tokens && special_contents_.count(*token) > 0) continue;
    if (!byte_level_decoder_) {  // no decoder: tokens joined by spaces
      if (!first) bytes.push_back(' ');
      bytes += *token;
      first = false;
      continue;
    }
    // ByteLevel: a token whose characters are all in the alphabet gives their bytes; any other
    // token (an added token outside the alphabet) gives its own UTF-8.
    bool mapped = DecodeUtf8(*token, cps, offsets);
    std::string b;
    for (size_t k = 0; mapped && k < cps.size(); ++k) {
      auto it = char_bytes_.find(cps[k]);
      if (it == char_bytes_.end()) {
        mapped = false;
      } else {
        b.push_back(static_cast<char>(it->second));
      }
    }
    bytes += mapped ? b : *token;
  }
  return LossyUtf8(bytes);
}

std::optional<int64_t> BpeTokenizer::TokenToId(std::string_view token) const {
  const std::string key(token);
  if (auto it = added_by_content_.find(key); it != added_by_content_.end()) return it->second;
  if (auto it = vocab_.find(key); it != vocab_.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> BpeTokenizer::IdToToken(int64_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return added_[it->second].content;
  if (auto it = vocab_r_.find(id); it != vocab_r_.end()) return it->second;
  return std::nullopt;
}

int64_t BpeTokenizer::VocabSize() const {
  int64_t n = static_cast<int64_t>(vocab_.size());
  for (const AddedToken& a : added_) {
    if (vocab_.count(a.content) == 0) ++n;
  }
  return n;
}

bool BpeTokenizer::IsSpecial(int64_t id) const {
  auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_[it->second].special;
}

}  // namespace diffmesh::models::glm_image
