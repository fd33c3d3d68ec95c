#include "common/process/heap_trim.h"

#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"

namespace diffmesh {
namespace {

TEST(HeapTrimTest, ReturnsFreeMemoryFromTheMiddleOfTheHeap) {
  // 256 MiB in 32 KiB blocks (below the mmap threshold: they live in the heap), touched; then
  // every block but each 16th is freed, so the free space is spread through the heap and the
  // kept blocks pin its top: glibc's own trimming of the top returns nothing.
  constexpr size_t kBlock = 32 << 10, kBlocks = 8192;
  std::vector<char*> blocks(kBlocks);
  for (auto& b : blocks) {
    b = static_cast<char*>(std::malloc(kBlock));
    ASSERT_NE(b, nullptr);
    std::memset(b, 1, kBlock);
  }
  for (size_t i = 0; i < kBlocks; ++i) {
    if (i % 16 != 15) {
      std::free(blocks[i]);
      blocks[i] = nullptr;
    }
  }
  const std::optional<int64_t> before = ResidentBytes();
  ASSERT_TRUE(before.has_value());
  const size_t free_before = mallinfo2().fordblks;
  ASSERT_GE(free_before, size_t{200} << 20);
  EXPECT_TRUE(TrimHeap(absl::ZeroDuration()));
  const int64_t after = ResidentBytes().value_or(-1);
  std::printf("RSS %.1f -> %.1f MiB (malloc's free bytes %.1f MiB)\n", *before / 1048576.0,
              after / 1048576.0, free_before / 1048576.0);
  EXPECT_GE(after, 0);
  EXPECT_LE(after, *before - (int64_t{150} << 20));
  // Rate-limited: a second call within the interval does nothing.
  EXPECT_FALSE(TrimHeap(absl::Hours(1)));
  for (char* b : blocks) std::free(b);
}

}  // namespace
}  // namespace diffmesh
