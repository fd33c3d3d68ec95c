#include "models/ltx2/gemma_tokenizer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "models/core/config_json.h"
#include "models/core/fixtures.h"

namespace diffmesh::models::ltx2 {
namespace {

const std::string kDir = FixturePath("gemma3-ref-a/tokenizer");

std::unique_ptr<GemmaTokenizer> LoadFixture() {
  auto t = GemmaTokenizer::Load(kDir + "/tiny_gemma_like_bpe.model");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

nlohmann::json Cases() {
  auto json = ReadJsonFile(kDir + "/hostile_strings.json");
  EXPECT_TRUE(json.ok()) << json.status();
  return json.ok() ? (*json)["cases"] : nlohmann::json::array();
}

TEST(GemmaTokenizerTest, SpecialIdsFromTheModel) {
  auto tok = LoadFixture();
  ASSERT_NE(tok, nullptr);
  auto json = ReadJsonFile(kDir + "/hostile_strings.json");
  ASSERT_TRUE(json.ok());
  const auto& special = (*json)["special_ids"];
  EXPECT_EQ(tok->pad_id(), special["pad"].get<int>());
  EXPECT_EQ(tok->eos_id(), special["eos"].get<int>());
  EXPECT_EQ(tok->bos_id(), special["bos"].get<int>());
  EXPECT_EQ(tok->unk_id(), special["unk"].get<int>());
  EXPECT_EQ(tok->vocab_size(), (*json)["vocab_size"].get<int>());
}

TEST(GemmaTokenizerTest, HostileStringsMatchSentencePiece) {
  auto tok = LoadFixture();
  ASSERT_NE(tok, nullptr);
  int cases = 0, matched = 0;
  for (const auto& c : Cases()) {
    const std::string text = c["text"].get<std::string>();
    SCOPED_TRACE(c["text"].dump());
    const std::vector<int> want = c["ids"].get<std::vector<int>>();
    const std::vector<int> got = tok->Encode(text);
    EXPECT_EQ(got, want);
    EXPECT_EQ(tok->EncodeAsPieces(text), c["pieces"].get<std::vector<std::string>>());
    // The LTX-2 prompt prefix: <bos>, then the ids.
    std::vector<int> with_bos = {tok->bos_id()};
    with_bos.insert(with_bos.end(), got.begin(), got.end());
    EXPECT_EQ(with_bos, c["ids_with_bos"].get<std::vector<int>>());
    ++cases;
    matched += got == want;
  }
  std::cout << "tokenizer: " << matched << " / " << cases << " hostile strings match exactly\n";
  EXPECT_GT(cases, 0);
}

TEST(GemmaTokenizerTest, PromptsAreStrippedLeftPaddedAndTruncated) {
  auto tok = LoadFixture();
  ASSERT_NE(tok, nullptr);
  const std::string a = "  leading and trailing spaces \n";
  const std::string b = "tabs\tand\nnew\nlines, tabs\tand\nnew\nlines, tabs\tand\nnew\nlines";
  const int64_t n_a = 1 + static_cast<int64_t>(tok->Encode(StripPythonWhitespace(a)).size());
  const int64_t max_length = n_a + 3;
  PromptTokens p = tok->EncodePrompts({a, b}, max_length);
  ASSERT_EQ(p.num_prompts, 2);
  ASSERT_EQ(static_cast<int64_t>(p.input_ids.size()), 2 * max_length);
  // Row 0: three pads, then <bos> and the stripped prompt's ids.
  for (int64_t j = 0; j < 3; ++j) {
    EXPECT_EQ(p.input_ids[j], tok->pad_id());
    EXPECT_EQ(p.attention_mask[j], 0);
  }
  EXPECT_EQ(p.input_ids[3], tok->bos_id());
  std::vector<int> ids = tok->Encode("leading and trailing spaces");
  for (size_t j = 0; j < ids.size(); ++j) {
    EXPECT_EQ(p.input_ids[4 + j], ids[j]);
    EXPECT_EQ(p.attention_mask[4 + j], 1);
  }
  // Row 1 is longer than max_length: <bos> and the first max_length − 1 ids, no padding.
  std::vector<int> ids_b = tok->Encode(b);
  ASSERT_GT(static_cast<int64_t>(ids_b.size()) + 1, max_length);
  EXPECT_EQ(p.input_ids[max_length], tok->bos_id());
  for (int64_t j = 1; j < max_length; ++j) {
    EXPECT_EQ(p.input_ids[max_length + j], ids_b[j - 1]);
    EXPECT_EQ(p.attention_mask[max_length + j], 1);
  }
}

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// Ids libsentencepiece 0.1.97 produced (testdata/tokenizer/make_cases.cc) for random strings with
// malformed UTF-8, user-defined symbols and whitespace runs, under the default normaliser options
// (dummy prefix, extra-whitespace removal) and whitespace-as-suffix without byte fallback.
TEST(GemmaTokenizerTest, MatchesLibraryOnOtherNormaliserOptions) {
  const char* src = std::getenv("DIFFMESH_SOURCE_DIR");
  const std::string dir =
      std::string(src != nullptr ? src : ".") + "/models/ltx2/testdata/tokenizer/";
  auto json = ReadJsonFile(dir + "cases.json");
  ASSERT_TRUE(json.ok()) << json.status();
  std::map<std::string, std::unique_ptr<GemmaTokenizer>> models;
  std::map<std::string, std::pair<int, int>> tally;  // model → (matched, cases)
  for (const auto& c : (*json)["cases"]) {
    const std::string model = c["model"].get<std::string>();
    if (models.count(model) == 0) {
      auto t = GemmaTokenizer::Load(dir + model);
      ASSERT_TRUE(t.ok()) << t.status();
      models[model] = std::move(*t);
    }
    const std::string text = FromHex(c["text_hex"].get<std::string>());
    const std::vector<int> got = models[model]->Encode(text);
    EXPECT_EQ(got, c["ids"].get<std::vector<int>>()) << model << " " << c["text_hex"];
    tally[model].first += got == c["ids"].get<std::vector<int>>();
    ++tally[model].second;
  }
  ASSERT_EQ(tally.size(), 2u);
  for (const auto& [model, t] : tally) {
    std::cout << model << ": " << t.first << " / " << t.second << " strings match exactly\n";
  }
}

TEST(StripPythonWhitespaceTest, MatchesStrStrip) {
  EXPECT_EQ(StripPythonWhitespace("  a b \t\n"), "a b");
  EXPECT_EQ(StripPythonWhitespace("\u3000\u00a0x\u2028\x1c"), "x");
  EXPECT_EQ(StripPythonWhitespace("\u200bx\ufeff"), "\u200bx\ufeff");  // not str.isspace
  EXPECT_EQ(StripPythonWhitespace(" \r\n "), "");
  EXPECT_EQ(StripPythonWhitespace(""), "");
}

TEST(GemmaTokenizerTest, RejectsBrokenModels) {
  EXPECT_EQ(GemmaTokenizer::Load(kDir + "/missing.model").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(GemmaTokenizer::FromSerializedProto("\x0a\x05\x0a").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A serialized ModelProto with the fixture's pieces and a trainer_spec setting `field` (41 bos_id,
// 42 eos_id, 43 pad_id) to `id`, then optionally `field2` to `id2` (later fields win).
std::string WithSpecialIds(int field, int id, int field2 = 0, int id2 = 0) {
  std::ifstream in(kDir + "/tiny_gemma_like_bpe.model", std::ios::binary);
  std::string model((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto varint = [](uint64_t v) {
    std::string out;
    for (; v >= 0x80; v >>= 7) out += static_cast<char>((v & 0x7f) | 0x80);
    return out + static_cast<char>(v);
  };
  std::string spec = varint(static_cast<uint64_t>(field) << 3) +
                     varint(static_cast<uint64_t>(static_cast<int64_t>(id)));
  if (field2 != 0) {
    spec += varint(static_cast<uint64_t>(field2) << 3) +
            varint(static_cast<uint64_t>(static_cast<int64_t>(id2)));
  }
  return model + "\x12" + varint(spec.size()) + spec;
}

// Found by fuzz/gemma_tokenizer_fuzzer: sscanf's %2X read "<0x-C>" as byte 4294967284 and wrote
// past the byte table. A byte piece is "<0x" + two upper-case hex digits + ">".
TEST(GemmaTokenizerTest, RejectsBytePiecesThatAreNotTwoHexDigits) {
  std::ifstream in(kDir + "/tiny_gemma_like_bpe.model", std::ios::binary);
  const std::string model((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // ModelProto.pieces += {piece: `piece`, type: BYTE (6)}.
  auto with_byte_piece = [&](const std::string& piece) {
    const std::string body = "\x0a" + std::string(1, static_cast<char>(piece.size())) + piece +
                             "\x18\x06";
    return model + "\x0a" + std::string(1, static_cast<char>(body.size())) + body;
  };
  for (const char* bad : {"<0x-C>", "<0x+1>", "<0x 1>", "<0xG0>", "<0xfe>", "[0x41]", "<0x41)"}) {
    auto t = GemmaTokenizer::FromSerializedProto(with_byte_piece(bad));
    ASSERT_FALSE(t.ok()) << bad;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find("bad byte piece"), std::string::npos) << t.status();
  }
}

// Found by fuzz/gemma_tokenizer_fuzzer: a model without pad and eos ids padded prompts with -1.
TEST(GemmaTokenizerTest, RejectsSpecialIdsItCannotUse) {
  ASSERT_TRUE(GemmaTokenizer::FromSerializedProto(WithSpecialIds(41, 2)).ok());
  const struct {
    std::string model;
    std::string field;
  } cases[] = {
      {WithSpecialIds(42, -1, 43, -1), "pad_id"},  // nothing to pad with
      {WithSpecialIds(42, -3), "eos_id -3"},
      {WithSpecialIds(41, -2), "bos_id -2"},
      {WithSpecialIds(43, 1 << 20), "pad_id 1048576"},
  };
  for (const auto& c : cases) {
    auto t = GemmaTokenizer::FromSerializedProto(c.model);
    ASSERT_FALSE(t.ok()) << c.field;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find(c.field), std::string::npos) << t.status();
  }
}

}  // namespace
}  // namespace diffmesh::models::ltx2
