// BpeTokenizer against the Hugging Face `tokenizers` library: tests/data/tokenizer holds a small
// byte-level BPE trained with the GLM-4 / GLM-Image pre-tokenizer layout and the library's own
// encodings and decodings of a hostile corpus (make_fixture.py there made them).
#include "models/glm_image/bpe_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "models/glm_image/ar_prompt.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::glm_image {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

std::string DataDir() {
  const char* src = std::getenv("DIFFMESH_SOURCE_DIR");
  return std::string(src != nullptr ? src : ".") + "/tests/data/tokenizer";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

const json& Expected() {
  static const json* expected = new json(json::parse(ReadFile(DataDir() + "/expected.json")));
  return *expected;
}

const json& BaseTokenizerJson() {
  static const json* base = new json(json::parse(ReadFile(DataDir() + "/tokenizer.json")));
  return *base;
}

// tokenizer.json with a variant's overrides (JSON pointer → value) applied.
std::unique_ptr<BpeTokenizer> LoadVariant(const json& overrides) {
  json j = BaseTokenizerJson();
  for (const auto& [pointer, value] : overrides.items()) j[json::json_pointer(pointer)] = value;
  auto tok = BpeTokenizer::FromJson(j.dump(), "tokenizer.json+overrides");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

std::vector<int64_t> Ids(const json& j) { return j.get<std::vector<int64_t>>(); }

std::string Escaped(const std::string& s) { return json(s).dump(); }

TEST(BpeTokenizerTest, FixtureIsPresent) {
  ASSERT_FALSE(Expected()["variants"].empty());
  EXPECT_EQ(Expected()["variants"][0]["name"], "glm4");
}

// Every case of every variant: encode with and without special tokens, decode, decode skipping
// specials, exactly as the library.
TEST(BpeTokenizerTest, MatchesReferenceEncodings) {
  int strings = 0, ids_checked = 0, mismatched = 0;
  for (const json& variant : Expected()["variants"]) {
    SCOPED_TRACE(variant["name"].get<std::string>());
    auto tok = LoadVariant(variant["overrides"]);
    ASSERT_NE(tok, nullptr);
    for (const json& c : variant["cases"]) {
      const std::string text = c["text"].get<std::string>();
      SCOPED_TRACE(Escaped(text));
      auto ids = tok->Encode(text, /*add_special_tokens=*/true);
      auto plain = tok->Encode(text, /*add_special_tokens=*/false);
      ASSERT_TRUE(ids.ok()) << ids.status();
      ASSERT_TRUE(plain.ok()) << plain.status();
      EXPECT_EQ(*ids, Ids(c["ids"]));
      EXPECT_EQ(*plain, Ids(c["ids_no_special"]));
      EXPECT_EQ(tok->Decode(Ids(c["ids_no_special"]), false), c["decode"].get<std::string>());
      EXPECT_EQ(tok->Decode(Ids(c["ids"]), true), c["decode_skip_special"].get<std::string>());
      const bool match = *ids == Ids(c["ids"]) && *plain == Ids(c["ids_no_special"]);
      mismatched += match ? 0 : 1;
      ++strings;
      ids_checked += static_cast<int>(c["ids"].size() + c["ids_no_special"].size());
    }
  }
  std::printf("reference encodings: %d strings, %d ids, %d strings mismatched\n", strings,
              ids_checked, mismatched);
  EXPECT_EQ(mismatched, 0);
  EXPECT_GT(strings, 150);
}

// Decoding every prefix of an id sequence that cuts multi-byte characters: the partial bytes
// become U+FFFD as the library's lossy UTF-8 conversion makes them.
TEST(BpeTokenizerTest, DecodesPartialCharactersLikeReference) {
  auto tok = LoadVariant(json::object());
  ASSERT_NE(tok, nullptr);
  int checked = 0;
  for (const json& p : Expected()["decode_prefixes"]) {
    const std::vector<int64_t> ids = Ids(p["ids"]);
    for (size_t k = 0; k <= ids.size(); ++k) {
      std::vector<int64_t> prefix(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k));
      EXPECT_EQ(tok->Decode(prefix), p["texts"][k].get<std::string>()) << "prefix " << k;
      ++checked;
    }
  }
  EXPECT_GT(checked, 20);
}

// Merges written as "a b" strings (older files) load to the same tokenizer as ["a", "b"] pairs.
TEST(BpeTokenizerTest, MergesAsStringsEncodeTheSame) {
  json j = BaseTokenizerJson();
  json merges = json::array();
  for (const json& m : j["model"]["merges"]) {
    merges.push_back(m.is_string() ? m.get<std::string>()
                                   : m[0].get<std::string>() + " " + m[1].get<std::string>());
  }
  j["model"]["merges"] = merges;
  auto tok = BpeTokenizer::FromJson(j.dump(), "string-merges");
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const json& c : Expected()["variants"][0]["cases"]) {
    auto ids = (*tok)->Encode(c["text"].get<std::string>());
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, Ids(c["ids"])) << Escaped(c["text"].get<std::string>());
  }
}

// Decode(Encode(s)) == s for text without added tokens that strip whitespace: byte-level BPE
// loses nothing. Random strings over a pool of awkward characters.
TEST(BpeTokenizerTest, DecodeRoundTrips) {
  auto tok = LoadVariant(json::object());
  ASSERT_NE(tok, nullptr);
  const std::vector<std::string> pool = {
      "a",          "Z",          "ing",    "qq",          " ",      "  ",     "\t",     "\n",
      "\r\n",       "\u00a0",     "\u3000", "'s",          "'",      "\"",     "1",      "23",
      "\u0663",     "\u00bd",     "\u4e2d", "\u6587",      "\u3042", "\uac00", "\u0301", "\u200d",
      "\U0001F468", "\U0001F3FD", "\uFE0F", "\U0001F1E8",  ".",      "!?",     "\u201c", "\u300c",
      "\x01",       "\u017f",     "\u05d0", "\u0939\u093f"};
  std::mt19937 rng(7);
  int checked = 0;
  for (int n = 0; n < 400; ++n) {
    std::string s;
    const int len = static_cast<int>(rng() % 24);
    for (int k = 0; k < len; ++k) s += pool[rng() % pool.size()];
    auto ids = tok->Encode(s, /*add_special_tokens=*/false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(tok->Decode(*ids), s) << Escaped(s);
    ++checked;
  }
  // The reference's own decodes of the corpus equal the input wherever no stripping token occurs.
  for (const json& c : Expected()["variants"][0]["cases"]) {
    const std::string text = c["text"].get<std::string>();
    if (text.find("<mask>") != std::string::npos || text.find("<pad_r>") != std::string::npos)
      continue;
    EXPECT_EQ(c["decode"].get<std::string>(), text);
    auto ids = tok->Encode(text, false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(tok->Decode(*ids), text) << Escaped(text);
    ++checked;
  }
  EXPECT_GT(checked, 400);
}

TEST(BpeTokenizerTest, SpecialTokensAndLookups) {
  auto tok = LoadVariant(json::object());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->VocabSize(), Expected()["vocab_size_with_added"].get<int64_t>());
  for (const auto& [token, id] : Expected()["token_to_id"].items()) {
    if (id.is_null()) {
      EXPECT_FALSE(tok->TokenToId(token).has_value()) << token;
      continue;
    }
    EXPECT_EQ(tok->TokenToId(token), id.get<int64_t>()) << token;
    EXPECT_EQ(tok->IdToToken(id.get<int64_t>()), token);
  }
  const int64_t sop = *tok->TokenToId("<sop>");
  const int64_t gmask = *tok->TokenToId("[gMASK]");
  const int64_t x = *tok->TokenToId("<x>");
  EXPECT_TRUE(tok->IsSpecial(sop));
  EXPECT_FALSE(tok->IsSpecial(x));
  EXPECT_FALSE(tok->TokenToId("<not a token>").has_value());
  EXPECT_FALSE(tok->IdToToken(1 << 30).has_value());

  // The post-processor's template: [gMASK] <sop> $A with special tokens, $A alone without.
  auto with = tok->Encode("hi<sop>there");
  auto without = tok->Encode("hi<sop>there", false);
  ASSERT_TRUE(with.ok() && without.ok());
  ASSERT_GE(with->size(), 3u);
  EXPECT_EQ((*with)[0], gmask);
  EXPECT_EQ((*with)[1], sop);
  EXPECT_EQ(std::vector<int64_t>(with->begin() + 2, with->end()), *without);
  // A special token inside text is one id; a near miss is ordinary text.
  EXPECT_EQ(std::count(without->begin(), without->end(), sop), 1);
  auto near = tok->Encode("<sop <so p>", false);
  ASSERT_TRUE(near.ok());
  EXPECT_EQ(std::count(near->begin(), near->end(), sop), 0);
  // "<y>" (normalized=false) is cut out of the raw text before the normalized tokens "<x>" and
  // "<x><y>" are looked for, so "<x><y>" splits; with "<y>" normalized too, the leftmost-longest
  // match "<x><y>" wins.
  const int64_t y = *tok->TokenToId("<y>");
  auto xy = tok->Encode("<x><y>", false);
  ASSERT_TRUE(xy.ok());
  EXPECT_EQ(*xy, (std::vector<int64_t>{x, y}));
  json j = BaseTokenizerJson();
  for (json& a : j["added_tokens"]) {
    if (a["content"] == "<y>") a["normalized"] = true;
  }
  auto all_normalized = BpeTokenizer::FromJson(j.dump(), "all-normalized");
  ASSERT_TRUE(all_normalized.ok()) << all_normalized.status();
  xy = (*all_normalized)->Encode("<x><y>", false);
  ASSERT_TRUE(xy.ok());
  EXPECT_EQ(*xy, std::vector<int64_t>{*tok->TokenToId("<x><y>")});
  // Decoding skips special tokens only when asked; non-special added tokens stay.
  EXPECT_EQ(tok->Decode(*with, true), "hithere");
  EXPECT_EQ(tok->Decode(*with, false), "[gMASK]<sop>hi<sop>there");
  EXPECT_EQ(tok->Decode({x, sop}, true), "<x>");
  // Unknown ids are dropped.
  EXPECT_EQ(tok->Decode({1 << 30, x}), "<x>");
}

TEST(BpeTokenizerTest, RejectsInvalidUtf8) {
  auto tok = LoadVariant(json::object());
  ASSERT_NE(tok, nullptr);
  for (const char* bad : {"\xff", "a\xc3", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80"}) {
    auto ids = tok->Encode(bad);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument) << Escaped(bad);
  }
}

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(BpeTokenizerTest, MalformedFilesGiveErrorsNamingTheFile) {
  const std::string full = ReadFile(DataDir() + "/tokenizer.json");
  // Truncated JSON.
  const std::string truncated =
      WriteTemp("truncated_tokenizer.json", full.substr(0, full.size() / 2));
  auto r = BpeTokenizer::FromFile(truncated);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(truncated));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("not valid JSON"));
  // Missing file.
  r = BpeTokenizer::FromFile(DataDir() + "/no_such_tokenizer.json");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("no_such_tokenizer.json"));

  auto broken = [&](const std::string& name, auto edit) {
    json j = BaseTokenizerJson();
    edit(j);
    const std::string path = WriteTemp(name, j.dump());
    auto t = BpeTokenizer::FromFile(path);
    EXPECT_FALSE(t.ok()) << name;
    if (!t.ok()) {
      EXPECT_THAT(std::string(t.status().message()), HasSubstr(path));
    }
    return t.ok() ? std::string() : std::string(t.status().message());
  };
  EXPECT_THAT(broken("wrong_type.json", [](json& j) { j["model"]["vocab"]["a"] = "not an id"; }),
              HasSubstr("malformed"));
  EXPECT_THAT(broken("no_model.json", [](json& j) { j.erase("model"); }), HasSubstr("model"));
  EXPECT_THAT(broken("bad_merge.json",
                     [](json& j) {
                       j["model"]["merges"][0] = json::array({"a", "\u2603\u2603"});
                     }),
              HasSubstr("merge 0"));
  EXPECT_THAT(
      broken("bad_regex.json",
             [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+"; }),
      HasSubstr("Split regex"));
  EXPECT_THAT(broken("wordpiece.json", [](json& j) { j["model"]["type"] = "WordPiece"; }),
              HasSubstr("WordPiece"));
  EXPECT_THAT(broken("bad_added.json", [](json& j) { j["added_tokens"][0].erase("id"); }),
              HasSubstr("malformed"));
  // Ids that are not u32 integers (found by fuzz/bpe_tokenizer_fuzzer: a float id was converted
  // with undefined behaviour).
  const std::string first = BaseTokenizerJson()["model"]["vocab"].begin().key();
  EXPECT_THAT(broken("float_added_id.json", [](json& j) { j["added_tokens"][0]["id"] = 1e300; }),
              HasSubstr("added_tokens[].id is 1e+300"));
  EXPECT_THAT(broken("float_vocab_id.json",
                     [&](json& j) { j["model"]["vocab"][first] = -5e20; }),
              HasSubstr("model.vocab[" + Escaped(first) + "]"));
  EXPECT_THAT(broken("negative_vocab_id.json", [&](json& j) { j["model"]["vocab"][first] = -1; }),
              HasSubstr("not a token id"));
  // Found by fuzz/bpe_tokenizer_fuzzer: a post-processor id that is no token went into every
  // encoding.
  EXPECT_THAT(broken("unknown_post_id.json",
                     [](json& j) {
                       j["post_processor"] = {{"type", "RobertaProcessing"},
                                              {"sep", {"<|endoftext|>", 3000}},
                                              {"cls", {"<sop>", 987654}}};
                     }),
              HasSubstr("adds id 987654"));
  EXPECT_THAT(broken("huge_vocab_id.json",
                     [&](json& j) { j["model"]["vocab"][first] = int64_t{1} << 32; }),
              HasSubstr("not a token id"));
}

// The text-to-image prompt through the fixture tokenizer, against transformers'
// GlmImageProcessor (and its chat-template path) on the same files.
TEST(BpeTokenizerTest, TextToImagePromptMatchesProcessor) {
  auto t = LoadArTextTokenizer(DataDir());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->grid_bos_token, "<sop>");
  EXPECT_EQ(t->grid_eos_token, "<eop>");
  EXPECT_EQ(t->bos_token, "<|dit_token_16384|>");
  int checked = 0;
  for (const json& p : Expected()["prompts"]) {
    const std::string prompt = p["prompt"].get<std::string>();
    SCOPED_TRACE(Escaped(prompt));
    auto built = BuildTextToImagePrompt(*t, prompt, p["height"].get<int>(), p["width"].get<int>());
    ASSERT_TRUE(built.ok()) << built.status();
    EXPECT_EQ(built->ids, Ids(p["ids_tokenizers"]));
    for (const char* key : {"ids_transformers_tokenizer", "ids_processor", "ids_chat_template"}) {
      if (!p.contains(key)) continue;  // the processor fails on an empty prompt
      EXPECT_EQ(built->ids, Ids(p[key])) << key;
      ++checked;
    }
    EXPECT_EQ(built->target.height, p["height"].get<int>() / 32);
    EXPECT_EQ(built->target.width, p["width"].get<int>() / 32);
    EXPECT_EQ(built->max_new_tokens, built->target.height * built->target.width +
                                         built->preview.height * built->preview.width + 1);
  }
  EXPECT_GE(checked, 9);
  EXPECT_EQ(BuildTextToImagePrompt(*t, "x", 100, 64).status().code(),
            absl::StatusCode::kInvalidArgument);
  ArTextTokenizer small = *t;
  small.max_prompt_tokens = 8;
  EXPECT_EQ(BuildTextToImagePrompt(small, "a long prompt", 256, 256).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(LoadArTextTokenizer(DataDir() + "/missing").ok());
}

}  // namespace
}  // namespace diffmesh::models::glm_image
