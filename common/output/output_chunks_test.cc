#include "common/output/output_chunks.h"

#include <random>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

TEST(OutputChunksTest, SplitsIntoBoundedOrderedChunksAndReassembles) {
  const std::string data = RandomBytes(5 * 1000 + 17, 7);
  v1::OutputInfo info;
  info.set_index(0);
  info.set_name("video");
  std::vector<v1::OutputChunk> chunks;
  ForEachOutputChunk(info, data, [&](v1::OutputChunk&& c) { chunks.push_back(std::move(c)); },
                     /*max_chunk_bytes=*/1000);
  ASSERT_EQ(chunks.size(), 6u);
  EXPECT_TRUE(chunks[0].has_info());
  EXPECT_EQ(chunks[0].info().size_bytes(), static_cast<int64_t>(data.size()));
  EXPECT_FALSE(chunks[1].has_info());
  for (const auto& c : chunks) EXPECT_LE(c.data().size(), 1000u);
  OutputAssembler assembler;
  for (const auto& c : chunks) ASSERT_TRUE(assembler.Add(c).ok());
  v1::GenerateResult result;
  *result.add_outputs()->mutable_info() = chunks[0].info();
  ASSERT_TRUE(assembler.Fill(result).ok());
  EXPECT_EQ(result.outputs(0).data(), data);
}

TEST(OutputChunksTest, DefaultChunkIsOneMebibyte) {
  const std::string data = RandomBytes((1 << 20) + 1, 3);
  v1::OutputInfo info;
  int n = 0;
  ForEachOutputChunk(info, data, [&](v1::OutputChunk&& c) {
    EXPECT_LE(c.data().size(), static_cast<size_t>(kMaxOutputChunkBytes));
    ++n;
  });
  EXPECT_EQ(n, 2);
}

TEST(OutputChunksTest, RejectsGapsMissingInfoAndShortOutputs) {
  const std::string data = RandomBytes(300, 1);
  v1::OutputInfo info;
  std::vector<v1::OutputChunk> chunks;
  ForEachOutputChunk(info, data, [&](v1::OutputChunk&& c) { chunks.push_back(std::move(c)); }, 100);
  {
    OutputAssembler a;
    EXPECT_EQ(a.Add(chunks[1]).code(), absl::StatusCode::kDataLoss);  // no info first
  }
  {
    OutputAssembler a;
    ASSERT_TRUE(a.Add(chunks[0]).ok());
    EXPECT_EQ(a.Add(chunks[2]).code(), absl::StatusCode::kDataLoss);  // gap
  }
  {
    OutputAssembler a;
    ASSERT_TRUE(a.Add(chunks[0]).ok());
    ASSERT_TRUE(a.Add(chunks[1]).ok());
    v1::GenerateResult result;
    *result.add_outputs()->mutable_info() = chunks[0].info();
    EXPECT_EQ(a.Fill(result).code(), absl::StatusCode::kDataLoss);  // 200 of 300 bytes
  }
}

}  // namespace
}  // namespace diffmesh
