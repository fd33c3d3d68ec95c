#include "services/ar/ar_core.h"

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "common/image/png.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

v1::ArRequest Request(const std::string& prompt, int size, uint64_t seed) {
  v1::ArRequest r;
  r.set_model("glm-image-tiny");
  r.set_prompt(prompt);
  r.set_height(size);
  r.set_width(size);
  r.set_seed(seed);
  return r;
}

struct ArRun {
  absl::Status status;
  std::vector<v1::ArTokenChunk> chunks;
  std::vector<int32_t> Tokens() const {
    std::vector<int32_t> out;
    for (const auto& c : chunks) out.insert(out.end(), c.tokens().begin(), c.tokens().end());
    return out;
  }
};

ArRun Generate(ArCore& core, const v1::ArRequest& r) {
  ArRun run;
  CallContext ctx;
  run.status = core.Generate(ctx, r, [&](const v1::ArTokenChunk& c) { run.chunks.push_back(c); });
  return run;
}

std::unique_ptr<ArCore> MakeCore(int max_batch = 4, int max_queue = 8) {
  ArCore::Options o;
  o.max_batch = max_batch;
  o.max_queue = max_queue;
  o.chunk_tokens = 16;
  auto core = ArCore::Create(o);
  EXPECT_TRUE(core.ok()) << core.status();
  return std::move(*core);
}

TEST(ArCoreTest, StreamIsOrderedCompleteAndEndsWithTheGrid) {
  auto core = MakeCore();
  ArRun run = Generate(*core, Request("a red fox", 256, 7));
  ASSERT_TRUE(run.status.ok()) << run.status;
  // 256×256: preview 16×16, target 8×8, then the end token.
  const int total = 16 * 16 + 8 * 8 + 1;
  int expected_offset = 0;
  for (size_t i = 0; i < run.chunks.size(); ++i) {
    const auto& c = run.chunks[i];
    EXPECT_EQ(c.offset(), expected_offset);
    EXPECT_EQ(c.total(), total);
    EXPECT_EQ(c.done(), i + 1 == run.chunks.size());
    expected_offset += c.tokens_size();
  }
  EXPECT_EQ(expected_offset, total);
  std::vector<int32_t> tokens = run.Tokens();
  EXPECT_EQ(tokens.back(), 257);  // image end
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    EXPECT_GE(tokens[i], 0);
    EXPECT_LT(tokens[i], 256) << "only VQ codes are sampled";
  }
  const v1::Tensor& grid = run.chunks.back().prior_tokens();
  ASSERT_EQ(grid.shape_size(), 2);
  EXPECT_EQ(grid.shape(0), 8);
  EXPECT_EQ(grid.shape(1), 8);
  // The grid is the last 64 image tokens (the target grid), row-major.
  const auto* ids = reinterpret_cast<const int64_t*>(grid.data().data());
  for (int i = 0; i < 64; ++i) EXPECT_EQ(ids[i], tokens[total - 1 - 64 + i]);
}

TEST(ArCoreTest, SeedDecidesTokensWhateverElseIsInTheBatch) {
  auto core = MakeCore();
  const v1::ArRequest a = Request("a lighthouse at dusk", 256, 1234);
  ArRun alone = Generate(*core, a);
  ASSERT_TRUE(alone.status.ok());
  EXPECT_EQ(Generate(*core, a).Tokens(), alone.Tokens());
  v1::ArRequest other_seed = a;
  other_seed.set_seed(1235);
  EXPECT_NE(Generate(*core, other_seed).Tokens(), alone.Tokens());

  // Same request while two others of different lengths share the batch.
  auto b = std::async(std::launch::async, [&] { return Generate(*core, Request("b", 320, 5)); });
  auto c = std::async(std::launch::async, [&] { return Generate(*core, Request("something longer", 192, 6)); });
  ArRun batched = Generate(*core, a);
  ASSERT_TRUE(b.get().status.ok());
  ASSERT_TRUE(c.get().status.ok());
  ASSERT_TRUE(batched.status.ok());
  EXPECT_EQ(batched.Tokens(), alone.Tokens());
}

TEST(ArCoreTest, CancelStopsWithinAStepAndFreesTheSlot) {
  auto core = MakeCore(/*max_batch=*/2);
  CallContext ctx;
  std::atomic<int> chunks{0};
  absl::Status s = core->Generate(ctx, Request("cancel me", 512, 3), [&](const v1::ArTokenChunk& c) {
    if (++chunks == 2) ctx.Cancel();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(chunks, 2) << "no chunk after the cancel";
  ArCore::Stats stats = core->stats();
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.free_slots, 2);
  EXPECT_TRUE(Generate(*core, Request("after", 64, 1)).status.ok());
}

TEST(ArCoreTest, ExpiredDeadlineIsReported) {
  auto core = MakeCore();
  CallContext ctx(absl::Now() - absl::Seconds(1));
  absl::Status s = core->Generate(ctx, Request("late", 256, 1), [](const v1::ArTokenChunk&) {});
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(core->stats().running, 0);
}

TEST(ArCoreTest, FullQueueAnswersResourceExhausted) {
  auto core = MakeCore(/*max_batch=*/1, /*max_queue=*/1);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false, first_chunk = false;
  // The first request holds the only slot (its stream blocks the scheduler) ...
  auto first = std::async(std::launch::async, [&] {
    CallContext ctx;
    return core->Generate(ctx, Request("first", 256, 1), [&](const v1::ArTokenChunk&) {
      std::unique_lock<std::mutex> lock(mu);
      first_chunk = true;
      cv.notify_all();
      cv.wait(lock, [&] { return release; });
    });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return first_chunk; });
  }
  // ... the second waits in the queue, the third finds it full.
  auto second = std::async(std::launch::async, [&] { return Generate(*core, Request("second", 64, 2)); });
  while (core->stats().waiting < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ArRun third = Generate(*core, Request("third", 64, 3));
  EXPECT_EQ(third.status.code(), absl::StatusCode::kResourceExhausted);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  EXPECT_TRUE(first.get().ok());
  EXPECT_TRUE(second.get().status.ok());
}

TEST(ArCoreTest, KvCacheBudgetSizesTheBatch) {
  ArCore::Options o;
  o.max_batch = 8;
  o.kv_cache_memory_bytes = 1;  // holds nothing
  auto none = ArCore::Create(o);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("kv_cache_memory"), std::string::npos);
  // glm-image-tiny: 2 layers × (K, V) × 2 KV heads × 32 dims × 4 bytes per token.
  const int64_t per_token = 2 * 2 * 2 * 32 * 4;
  const int64_t capacity = 2048 + (16 * 16 + 16 * 16 + 1);  // prompt limit + 512² grids
  o.kv_cache_memory_bytes = 3 * capacity * per_token + 100;
  auto three = ArCore::Create(o);
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_EQ((*three)->stats().free_slots, 3);
}

TEST(ArCoreTest, RejectsUnknownModelAndBadSize) {
  auto core = MakeCore();
  v1::ArRequest r = Request("x", 256, 1);
  r.set_model("other");
  EXPECT_EQ(Generate(*core, r).status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Generate(*core, Request("x", 100, 1)).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Generate(*core, Request("x", 1024, 1)).status.code(), absl::StatusCode::kInvalidArgument);
}

// A random RGB image of `width` × `height` as PNG bytes.
std::string RandomPng(int width, int height, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  for (auto& v : rgb) v = static_cast<uint8_t>(rng());
  auto png = EncodePng(rgb.data(), width, height);
  EXPECT_TRUE(png.ok()) << png.status();
  return png.ok() ? *png : "";
}

TEST(ArCoreTest, AnEditRequestConditionsOnItsImageAndReportsItsPriorGrid) {
  auto core = MakeCore();
  v1::ArRequest r = Request("make it blue", 128, 3);
  v1::InputMedia* in = r.add_inputs();
  in->set_role(v1::MEDIA_ROLE_EDIT_IMAGE);
  in->set_data(RandomPng(64, 96, 1));
  ArRun run = Generate(*core, r);
  ASSERT_TRUE(run.status.ok()) << run.status;
  ASSERT_FALSE(run.chunks.empty());
  const v1::ArTokenChunk& first = run.chunks.front();
  // Editing generates the target grid only (no preview), then the end token.
  EXPECT_EQ(first.total(), 4 * 4 + 1);
  EXPECT_EQ(first.grid().offset(), 0);
  EXPECT_EQ(first.grid().height(), 4);
  ASSERT_EQ(first.condition_prior_tokens_size(), 1);
  EXPECT_EQ(first.condition_prior_tokens(0).shape_size(), 2);
  EXPECT_GT(first.condition_prior_tokens(0).shape(0), 0);
  for (size_t i = 1; i < run.chunks.size(); ++i) {
    EXPECT_EQ(run.chunks[i].condition_prior_tokens_size(), 0);
  }
  EXPECT_EQ(run.Tokens().size(), 17u);
  // The image is in the prompt: another image gives other tokens, the same image the same.
  ArRun again = Generate(*core, r);
  EXPECT_EQ(again.Tokens(), run.Tokens());
  r.mutable_inputs(0)->set_data(RandomPng(64, 96, 2));
  EXPECT_NE(Generate(*core, r).Tokens(), run.Tokens());
}

// Edit requests batch with text-to-image ones (continuous batching, per-sequence positions);
// each sequence's tokens equal its tokens alone.
TEST(ArCoreTest, EditRequestsShareTheBatchWithTextRequests) {
  auto core = MakeCore(/*max_batch=*/4);
  v1::ArRequest edit = Request("make it blue", 128, 3);
  v1::InputMedia* in = edit.add_inputs();
  in->set_role(v1::MEDIA_ROLE_EDIT_IMAGE);
  in->set_data(RandomPng(64, 64, 9));
  const v1::ArRequest text = Request("a red fox", 128, 4);
  const std::vector<int32_t> edit_alone = Generate(*core, edit).Tokens();
  const std::vector<int32_t> text_alone = Generate(*core, text).Tokens();
  std::vector<std::thread> threads;
  std::vector<ArRun> runs(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { runs[i] = Generate(*core, i % 2 == 0 ? edit : text); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(runs[i].status.ok()) << runs[i].status;
    EXPECT_EQ(runs[i].Tokens(), i % 2 == 0 ? edit_alone : text_alone) << "request " << i;
  }
}

TEST(ArCoreTest, EditInputsThatAreNotImagesAreRejectedNamingThem) {
  auto core = MakeCore();
  v1::ArRequest r = Request("make it blue", 128, 3);
  v1::InputMedia* in = r.add_inputs();
  in->set_role(v1::MEDIA_ROLE_EDIT_IMAGE);
  in->set_data("not an image at all");
  ArRun run = Generate(*core, r);
  EXPECT_EQ(run.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run.status.message().substr(0, 14), "inputs[0].data") << run.status;
  in->set_data(RandomPng(32, 32, 4));
  in->set_role(v1::MEDIA_ROLE_FIRST_FRAME);
  run = Generate(*core, r);
  EXPECT_EQ(run.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run.status.message().substr(0, 14), "inputs[0].role") << run.status;
}

}  // namespace
}  // namespace diffmesh
