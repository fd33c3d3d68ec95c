// The API-token check and the token-file format it reads.
#include "common/rpc/token_authenticator.h"

#include <unistd.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/rpc/token_file.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", getpid(), "_", name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(ConstantTimeEqualsTest, EqualOnlyForTheSameBytes) {
  EXPECT_TRUE(ConstantTimeEquals("s3cret", "s3cret"));
  EXPECT_FALSE(ConstantTimeEquals("s3cret", "S3cret"));  // first byte
  EXPECT_FALSE(ConstantTimeEquals("s3cret", "s3creT"));  // last byte
  EXPECT_FALSE(ConstantTimeEquals("s3cret", "s3cre"));   // a prefix
  EXPECT_FALSE(ConstantTimeEquals("s3cret", "s3crets"));
  EXPECT_FALSE(ConstantTimeEquals("s3cret", "s3crets3cret"));  // the secret repeated
  EXPECT_FALSE(ConstantTimeEquals("s3cret", ""));
}

TEST(TokenAuthenticatorTest, AcceptsAnyConfiguredTokenAsBearer) {
  TokenAuthenticator auth({"alpha-1", "beta/2+="});
  EXPECT_TRUE(auth.Check({"Bearer alpha-1"}).ok());
  EXPECT_TRUE(auth.Check({"Bearer beta/2+="}).ok());
  EXPECT_TRUE(auth.Check({"bearer alpha-1"}).ok()) << "the scheme is case-insensitive";
}

TEST(TokenAuthenticatorTest, RejectsWithoutSayingWhatWasSent) {
  TokenAuthenticator auth({"alpha-1"});
  struct Case {
    std::vector<absl::string_view> values;
    std::string why;
  };
  const std::vector<Case> cases = {
      {{}, "missing"},
      {{"Bearer wrong-token"}, "invalid"},
      {{"Bearer alpha-"}, "invalid"},
      {{"Bearer alpha-12"}, "invalid"},
      {{"Bearer "}, "not 'Bearer <token>'"},
      {{"alpha-1"}, "not 'Bearer <token>'"},
      {{"Basic alpha-1"}, "not 'Bearer <token>'"},
      {{"Bearer alpha-1", "Bearer alpha-1"}, "more than one"},
  };
  for (const auto& c : cases) {
    absl::Status s = auth.Check(c.values);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << c.why;
    EXPECT_NE(s.message().find(c.why), std::string::npos) << s;
    for (absl::string_view v : c.values) {
      if (v.size() > 7) {
        EXPECT_EQ(s.message().find(v.substr(7)), std::string::npos) << s;
      }
    }
    EXPECT_EQ(s.message().find("alpha-1"), std::string::npos) << s;
  }
}

TEST(TokenFileTest, SkipsBlankLinesAndComments) {
  auto tokens = ParseTokens("# team tokens\n\n  alpha-1  \r\n#beta\nbeta-2\n\n", "t");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(*tokens, (std::vector<std::string>{"alpha-1", "beta-2"}));
}

TEST(TokenFileTest, RejectsEmptyFilesAndNonTokensNamingTheLineNotTheToken) {
  for (const char* text : {"", "\n\n", "# only a comment\n"}) {
    auto tokens = ParseTokens(text, "token file 'x'");
    EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(tokens.status().message().find("no token"), std::string::npos) << tokens.status();
  }
  auto spaced = ParseTokens("ok-token\nsecret-one # trailing comment\n", "token file 'x'");
  EXPECT_EQ(spaced.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(spaced.status().message().find("line 2"), std::string::npos) << spaced.status();
  EXPECT_EQ(spaced.status().message().find("secret-one"), std::string::npos) << spaced.status();
  EXPECT_FALSE(ParseTokens("caf\xc3\xa9\n", "t").ok()) << "non-ASCII cannot travel in metadata";
  EXPECT_FALSE(ParseTokens(std::string(5000, 'a'), "t").ok());
}

TEST(TokenFileTest, FromFileNamesTheFile) {
  const std::string good = WriteTemp("tokens", "# ci\nalpha-1\n");
  auto auth = TokenAuthenticator::FromFile(good);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ((*auth)->size(), 1u);
  EXPECT_TRUE((*auth)->Check({"Bearer alpha-1"}).ok());

  const std::string empty = WriteTemp("empty_tokens", "\n# nothing\n");
  auto none = TokenAuthenticator::FromFile(empty);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find(empty), std::string::npos) << none.status();

  auto missing = TokenAuthenticator::FromFile("/nonexistent/tokens.txt");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/tokens.txt"), std::string::npos);

  // A client's file holds exactly one token.
  EXPECT_EQ(*ReadClientToken(good), "alpha-1");
  const std::string two = WriteTemp("two_tokens", "a\nb\n");
  EXPECT_EQ(ReadClientToken(two).status().code(), absl::StatusCode::kInvalidArgument);
  for (const auto& p : {good, empty, two}) unlink(p.c_str());
}

}  // namespace
}  // namespace diffmesh
