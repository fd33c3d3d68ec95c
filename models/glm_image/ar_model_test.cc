#include "models/glm_image/ar_model.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/safetensors/safetensors.h"
#include "models/core/fixtures.h"
#include "models/core/ops.h"
#if defined(DIFFMESH_WITH_CUDA)
#include "models/glm_image/cuda/ar_decode.h"
#endif

namespace diffmesh::models::glm_image {
namespace {

constexpr double kTol = 1e-5;

std::string ArDir() { return FixturePath("glm-image-ref-a/vision_language_encoder"); }

struct ArIo {
  at::Tensor input_ids;  // [1, 11]
  at::Tensor logits;     // [1, 11, 256]
};

ArIo LoadIo() {
  auto io = Checkpoint::Open(FixturePath("glm-image-ref-a/ar_io.safetensors"));
  EXPECT_TRUE(io.ok()) << io.status();
  return {ToTensor(*(*io)->Find("input_ids")), ToTensor(*(*io)->Find("logits"))};
}

const ArModel& FixtureModel() {
  static const ArModel* model = [] {
    auto m = ArModel::Load(ArDir());
    EXPECT_TRUE(m.ok()) << m.status();
    return m->release();
  }();
  return *model;
}

std::unique_ptr<KvCache> MakeCache(const ArModel& model, int64_t slots, int64_t capacity,
                                   at::ScalarType dtype = at::kFloat) {
  auto cache = KvCache::Create(model.config(), {slots, capacity, dtype, at::kCPU});
  EXPECT_TRUE(cache.ok()) << cache.status();
  return std::move(*cache);
}

at::Tensor TextPositions(int64_t start, int64_t n) {
  return at::arange(start, start + n, at::kLong);
}

at::Tensor RandomIds(int64_t n, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(0, vocab, {n}, gen, at::kLong);
}

// Prefills `ids[:prefill]` into `slot`, then decodes the rest one token at a time; returns the
// logits predicted after each token from prefill-1 on, [n - prefill + 1, V].
at::Tensor RunIncremental(const ArModel& model, KvCache& cache, int64_t slot, const at::Tensor& ids,
                          int64_t prefill) {
  std::vector<at::Tensor> rows;
  auto first = model.Prefill(cache, slot, ids.narrow(0, 0, prefill), TextPositions(0, prefill));
  EXPECT_TRUE(first.ok()) << first.status();
  rows.push_back(*first);
  for (int64_t i = prefill; i < ids.size(0); ++i) {
    auto step = model.Decode(cache, {slot}, ids.narrow(0, i, 1), TextPositions(i, 1));
    EXPECT_TRUE(step.ok()) << step.status();
    rows.push_back(step->squeeze(0));
  }
  return at::stack(rows);
}

ArConfig TinyConfig() {
  ArConfig c;
  c.vocab_size = 300;
  c.vision_vocab_size = 40;
  c.hidden_size = 64;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.partial_rotary_factor = 0.5;  // as GLM-4: rotary on half of each head
  c.mrope_section = {2, 1, 1};
  c.max_position_embeddings = 256;
  c.image_start_token_id = 290;
  c.image_end_token_id = 291;
  return c;
}

std::unique_ptr<ArModel> TinyModel(uint64_t seed, at::ScalarType dtype = at::kFloat) {
  const ArConfig c = TinyConfig();
  auto m = ArModel::Create(c, InitSeeded(ArModel::Params(c), seed), {dtype, at::kCPU, 0});
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

TEST(ArConfigTest, ParsesFixtureConfig) {
  auto c = ArConfig::FromFile(ArDir());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->num_hidden_layers, 2);
  EXPECT_EQ(c->num_attention_heads, 4);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->rotary_dim(), 16);  // no partial_rotary_factor in this config
  EXPECT_EQ(c->mrope_section, (std::array<int64_t, 3>{2, 3, 3}));
  EXPECT_EQ(c->vocab_size, 1200);
  EXPECT_EQ(c->vision_vocab_size, 256);
  EXPECT_EQ(c->image_start_token_id, 1101);
  EXPECT_EQ(c->image_end_token_id, 1102);
  EXPECT_EQ(c->image_token_id, 1100);
}

TEST(ArConfigTest, RejectsInconsistentSections) {
  nlohmann::json j = {
      {"text_config",
       {{"hidden_size", 64},
        {"num_attention_heads", 4},
        {"rope_parameters", {{"rope_type", "default"}, {"mrope_section", {2, 3, 4}}}}}}};
  EXPECT_EQ(ArConfig::FromJson(j).status().code(), absl::StatusCode::kInvalidArgument);
  j["text_config"]["rope_parameters"]["mrope_section"] = {2, 3, 3};
  EXPECT_TRUE(ArConfig::FromJson(j).ok());
  j["text_config"]["rope_parameters"]["rope_type"] = "yarn";
  EXPECT_EQ(ArConfig::FromJson(j).status().code(), absl::StatusCode::kInvalidArgument);
}

// Regression: a float such as 1e300 for an integer field was converted (undefined behaviour,
// flagged by UBSan) instead of being rejected.
TEST(ArConfigTest, OutOfRangeNumbersAreInvalidArgumentNamingTheKey) {
  const nlohmann::json valid = {
      {"text_config",
       {{"hidden_size", 64},
        {"num_attention_heads", 4},
        {"rope_parameters", {{"rope_type", "default"}, {"mrope_section", {2, 3, 3}}}}}}};
  ASSERT_TRUE(ArConfig::FromJson(valid).ok());
  for (const char* key : {"vocab_size", "hidden_size", "num_key_value_heads", "head_dim"}) {
    nlohmann::json j = valid;
    j["text_config"][key] = 1e300;
    const absl::Status s = ArConfig::FromJson(j).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_NE(s.message().find(key), std::string::npos) << s;
  }
  nlohmann::json j = valid;
  j["text_config"]["rope_parameters"]["mrope_section"] = {2, 3, 1e300};
  EXPECT_EQ(ArConfig::FromJson(j).status().code(), absl::StatusCode::kInvalidArgument);
  j = valid;
  j["image_token_id"] = -1e300;
  EXPECT_EQ(ArConfig::FromJson(j).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ArModelTest, ParamsAreExactlyTheDecoderAndHeadOfTheCheckpoint) {
  auto config = ArConfig::FromFile(ArDir());
  ASSERT_TRUE(config.ok());
  auto ckpt = Checkpoint::Open(ArDir());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::map<std::string, std::vector<int64_t>> expected;
  for (const auto& [name, view] : (*ckpt)->tensors()) {
    bool ignored = false;
    for (const auto& p : ArModel::IgnoredPrefixes()) ignored |= name.rfind(p, 0) == 0;
    if (!ignored) expected[name] = view->shape;
  }
  std::map<std::string, std::vector<int64_t>> declared;
  for (const ParamSpec& s : ArModel::Params(*config)) declared[s.name] = s.shape;
  EXPECT_EQ(declared, expected);
  EXPECT_EQ(declared.at("lm_head.weight"), (std::vector<int64_t>{256, 64}));
}

TEST(ArModelTest, ForwardMatchesReference) {
  const ArIo io = LoadIo();
  auto logits = FixtureModel().Forward(io.input_ids);
  ASSERT_TRUE(logits.ok()) << logits.status();
  ASSERT_EQ(logits->sizes(), io.logits.sizes());
  const double err = RelativeError(*logits, io.logits);
  std::printf("full forward vs reference: rel err %.3g\n", err);
  EXPECT_LE(err, kTol);
}

TEST(ArModelTest, PrefillThenDecodeMatchesForwardAtEveryPosition) {
  const ArIo io = LoadIo();
  const at::Tensor ids = io.input_ids[0];
  const at::Tensor ref = io.logits[0];  // [11, 256]
  const ArModel& model = FixtureModel();
  auto cache = MakeCache(model, 2, 16);
  const int64_t slot = *cache->Allocate();
  const at::Tensor got = RunIncremental(model, *cache, slot, ids, 4);  // rows for tokens 3..10
  double worst = 0;
  for (int64_t i = 0; i < got.size(0); ++i) {
    worst = std::max(worst, RelativeError(got[i], ref[3 + i]));
  }
  std::printf("prefill(4) + 7 decode steps vs reference, worst row rel err %.3g\n", worst);
  EXPECT_LE(worst, kTol);
  EXPECT_EQ(cache->length(slot), 11);

  // Chunked prefill: the second chunk attends to the first through the cache.
  const int64_t other = *cache->Allocate();
  ASSERT_TRUE(model.Prefill(*cache, other, ids.narrow(0, 0, 3), TextPositions(0, 3)).ok());
  auto chunk = model.Prefill(*cache, other, ids.narrow(0, 3, 5), TextPositions(3, 5));
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_LE(RelativeError(*chunk, ref[7]), kTol);
}

// The same sequence decoded alone and sharing each step with a sequence of another length (in
// both a contiguous and a scattered slot order) gives the same logits.
TEST(ArModelTest, DecodeIsBatchInvariant) {
  const ArIo io = LoadIo();
  const at::Tensor a = io.input_ids[0];        // 11 tokens
  const at::Tensor b = RandomIds(9, 1200, 5);  // another prompt, prefilled longer
  const ArModel& model = FixtureModel();

  auto solo_cache = MakeCache(model, 1, 16);
  const int64_t solo = *solo_cache->Allocate();
  const at::Tensor a_alone = RunIncremental(model, *solo_cache, solo, a, 3);  // rows: tokens 2..10
  auto b_forward = model.Forward(b.unsqueeze(0));
  ASSERT_TRUE(b_forward.ok());

  for (const std::vector<int64_t>& order : {std::vector<int64_t>{0, 1}, {2, 0}}) {
    auto cache = MakeCache(model, 3, 16);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(cache->Allocate().ok());
    const int64_t slot_a = order[0], slot_b = order[1];
    auto a0 = model.Prefill(*cache, slot_a, a.narrow(0, 0, 3), TextPositions(0, 3));
    auto b0 = model.Prefill(*cache, slot_b, b.narrow(0, 0, 5), TextPositions(0, 5));
    ASSERT_TRUE(a0.ok() && b0.ok());
    double worst_a = RelativeError(*a0, a_alone[0]);
    double worst_b = RelativeError(*b0, (*b_forward)[0][4]);
    for (int64_t step = 0; step < 4; ++step) {  // b runs out after 4 more tokens
      const at::Tensor tokens = at::stack({a[3 + step], b[5 + step]});
      const at::Tensor pos = at::tensor({3 + step, 5 + step}, at::kLong);
      auto logits = model.Decode(*cache, {slot_a, slot_b}, tokens, pos);
      ASSERT_TRUE(logits.ok()) << logits.status();
      worst_a = std::max(worst_a, RelativeError((*logits)[0], a_alone[1 + step]));
      worst_b = std::max(worst_b, RelativeError((*logits)[1], (*b_forward)[0][5 + step]));
    }
    // a continues alone in the shared cache after b is done (and freed).
    ASSERT_TRUE(cache->Free(slot_b).ok());
    for (int64_t i = 7; i < 11; ++i) {
      auto logits = model.Decode(*cache, {slot_a}, a.narrow(0, i, 1), TextPositions(i, 1));
      ASSERT_TRUE(logits.ok());
      worst_a = std::max(worst_a, RelativeError((*logits)[0], a_alone[i - 2]));
    }
    std::printf("slots {%lld,%lld}: batched vs alone rel err a %.3g, b vs forward %.3g\n",
                static_cast<long long>(slot_a), static_cast<long long>(slot_b), worst_a, worst_b);
    EXPECT_LE(worst_a, kTol);
    EXPECT_LE(worst_b, kTol);
  }
}

TEST(ArModelTest, FreedSlotIsReusedAndErrorsAreReported) {
  const ArIo io = LoadIo();
  const at::Tensor a = io.input_ids[0];
  const ArModel& model = FixtureModel();
  auto cache = MakeCache(model, 2, 12);
  EXPECT_EQ(*cache->Allocate(), 0);
  EXPECT_EQ(*cache->Allocate(), 1);
  EXPECT_EQ(cache->Allocate().status().code(), absl::StatusCode::kResourceExhausted);

  // Fill slot 0 with another sequence, free it, and run `a` in the reused slot.
  const at::Tensor junk = RandomIds(12, 1200, 9);
  ASSERT_TRUE(model.Prefill(*cache, 0, junk, TextPositions(0, 12)).ok());
  ASSERT_TRUE(cache->Free(0).ok());
  EXPECT_EQ(cache->Free(0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(model.Decode(*cache, {0}, a.narrow(0, 0, 1), TextPositions(0, 1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache->num_free(), 1);
  EXPECT_EQ(*cache->Allocate(), 0);
  EXPECT_EQ(cache->length(0), 0);
  const at::Tensor got = RunIncremental(model, *cache, 0, a, 2);
  EXPECT_LE(RelativeError(got, io.logits[0].narrow(0, 1, 10)), kTol);

  // Slot 0 now holds 11 of 12 tokens: one more decode fits, the next does not.
  ASSERT_TRUE(model.Decode(*cache, {0}, a.narrow(0, 0, 1), TextPositions(11, 1)).ok());
  EXPECT_EQ(model.Decode(*cache, {0}, a.narrow(0, 0, 1), TextPositions(12, 1)).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(model.Prefill(*cache, 1, RandomIds(13, 1200, 1), TextPositions(0, 13)).status().code(),
            absl::StatusCode::kOutOfRange);
  // Bad requests.
  ASSERT_TRUE(model.Prefill(*cache, 1, a.narrow(0, 0, 2), TextPositions(0, 2)).ok());
  EXPECT_EQ(model.Decode(*cache, {1, 1}, a.narrow(0, 0, 2), TextPositions(2, 2)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      model.Decode(*cache, {1}, at::tensor({5000}, at::kLong), TextPositions(2, 1)).status().code(),
      absl::StatusCode::kOutOfRange);
  EXPECT_EQ(model.Decode(*cache, {1}, a.narrow(0, 0, 2), TextPositions(2, 2)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->length(1), 2);  // failed calls leave the slot unchanged
}

TEST(ArPositionsTest, GenerationPositionsFollowTheReference) {
  // transformers' get_rope_index docstring, text-to-image case: prompt of 5 tokens, grids
  // generated 3x2 then 3x3, then the end marker.
  const at::Tensor p = GenerationPositions(5, {{3, 2}, {3, 3}});
  const std::vector<int64_t> t = {5, 5, 5, 5, 5, 5, 8, 8, 8, 8, 8, 8, 8, 8, 8, 11};
  const std::vector<int64_t> h = {5, 5, 6, 6, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10, 10, 11};
  const std::vector<int64_t> w = {5, 6, 5, 6, 5, 6, 8, 9, 10, 8, 9, 10, 8, 9, 10, 11};
  EXPECT_TRUE(at::equal(p, at::stack({at::tensor(t), at::tensor(h), at::tensor(w)})));
}

TEST(ArPositionsTest, PromptPositionsOfAnImageToImagePrompt) {
  // transformers' get_rope_index docstring, image-to-image case: <start> 6 image tokens (3x2)
  // <end> 4 text tokens <start>.
  const ArConfig c = TinyConfig();
  const int64_t s = c.image_start_token_id, e = c.image_end_token_id;
  const at::Tensor ids = at::tensor(std::vector<int64_t>{s, 7, 7, 7, 7, 7, 7, e, 1, 2, 3, 4, s});
  auto p = PromptPositions(c, ids, {{3, 2}});
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<int64_t> t = {0, 1, 1, 1, 1, 1, 1, 4, 5, 6, 7, 8, 9};
  const std::vector<int64_t> h = {0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9};
  const std::vector<int64_t> w = {0, 1, 2, 1, 2, 1, 2, 4, 5, 6, 7, 8, 9};
  EXPECT_TRUE(at::equal(p->positions, at::stack({at::tensor(t), at::tensor(h), at::tensor(w)})));
  EXPECT_EQ(p->next_position, 10);
  // Text-only prompt: 0..S-1 on every axis, generation starts at S.
  auto text = PromptPositions(c, at::tensor(std::vector<int64_t>{1, 2, 3, s}), {});
  ASSERT_TRUE(text.ok());
  EXPECT_TRUE(at::equal(text->positions, at::arange(4, at::kLong).expand({3, 4})));
  EXPECT_EQ(text->next_position, 4);
  EXPECT_EQ(PromptPositions(c, ids, {{2, 2}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PromptPositions(c, ids, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ArModelTest, TinySeededModelIsDeterministic) {
  auto m1 = TinyModel(7), m2 = TinyModel(7), m3 = TinyModel(8);
  const at::Tensor ids = RandomIds(10, 300, 3).unsqueeze(0);
  auto a = m1->Forward(ids), b = m2->Forward(ids), c = m3->Forward(ids);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->sizes(), (std::vector<int64_t>{1, 10, 40}));
  EXPECT_TRUE(at::equal(*a, *b));
  EXPECT_TRUE(at::equal(*a, *m1->Forward(ids)));
  EXPECT_GT(RelativeError(*a, *c), 1e-2);
}

// Image generation with 2-D grid positions (partial rotary, M-RoPE sections {2,1,1}): the
// incremental path and the full forward agree, and the grid positions do change the result.
TEST(ArModelTest, TinyImageGenerationMatchesForwardWithGridPositions) {
  auto model = TinyModel(11);
  const ArConfig& c = model->config();
  at::Tensor prompt = at::cat({RandomIds(5, 280, 4), at::tensor({c.image_start_token_id})});
  auto pp = PromptPositions(c, prompt, {});
  ASSERT_TRUE(pp.ok());
  const at::Tensor gen_pos = GenerationPositions(pp->next_position, {{2, 3}, {3, 3}});

  auto cache = MakeCache(*model, 2, 32);
  const int64_t slot = *cache->Allocate();
  auto logits = model->Prefill(*cache, slot, prompt, pp->positions);
  ASSERT_TRUE(logits.ok());
  std::vector<at::Tensor> steps = {*logits};
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < 15; ++i) {  // the 6 + 9 grid tokens, fed back greedily
    tokens.push_back(steps.back().argmax().item<int64_t>());
    auto next = model->Decode(*cache, {slot}, at::tensor({tokens.back()}, at::kLong),
                              gen_pos.narrow(1, i, 1));
    ASSERT_TRUE(next.ok()) << next.status();
    steps.push_back(next->squeeze(0));
  }
  const at::Tensor seq = at::cat({prompt, at::tensor(tokens, at::kLong)}).unsqueeze(0);
  const at::Tensor pos = at::cat({pp->positions, gen_pos.narrow(1, 0, 15)}, 1).unsqueeze(1);
  auto full = model->Forward(seq, pos);
  ASSERT_TRUE(full.ok()) << full.status();
  const at::Tensor got = at::stack(steps);  // rows for tokens 5..20
  const double err = RelativeError(got, (*full)[0].narrow(0, 5, 16));
  std::printf("tiny image generation, incremental vs full forward: rel err %.3g\n", err);
  EXPECT_LE(err, kTol);
  auto text_pos = model->Forward(seq);
  ASSERT_TRUE(text_pos.ok());
  EXPECT_GT(RelativeError(*text_pos, *full), 1e-4);
}

// Same model in bf16 (the GPU dtype): every path runs and stays close to fp32.
TEST(ArModelTest, TinyModelRunsInBfloat16) {
  auto f32 = TinyModel(3), bf16 = TinyModel(3, at::kBFloat16);
  const at::Tensor ids = RandomIds(8, 300, 6);
  auto ref = f32->Forward(ids.unsqueeze(0));
  auto full = bf16->Forward(ids.unsqueeze(0));
  ASSERT_TRUE(ref.ok() && full.ok());
  EXPECT_EQ(full->scalar_type(), at::kBFloat16);
  EXPECT_LE(RelativeError(*full, *ref), 5e-2);
  auto cache = MakeCache(*bf16, 2, 16, at::kBFloat16);
  const at::Tensor inc = RunIncremental(*bf16, *cache, *cache->Allocate(), ids, 5);
  EXPECT_LE(RelativeError(inc, (*ref)[0].narrow(0, 4, 4)), 5e-2);
  // A cache of another dtype is refused.
  auto f32_cache = MakeCache(*bf16, 1, 16, at::kFloat);
  ASSERT_TRUE(f32_cache->Allocate().ok());
  EXPECT_EQ(bf16->Prefill(*f32_cache, 0, ids, TextPositions(0, 8)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace diffmesh::models::glm_image

namespace diffmesh::models::glm_image {
namespace {

// The bucketed (graph-capturable) decode equals the eager decode: three sequences of different
// lengths in scattered slots, a batch of 3 padded to a bucket of 4, over enough steps to cross a
// key-length bucket (64 → 128).
TEST(ArModelTest, BucketedDecodeMatchesDecode) {
  auto model = TinyModel(11);
  KvCacheOptions o;
  o.max_slots = 6;
  o.capacity = 160;
  auto eager = KvCache::Create(model->config(), o);
  auto bucketed = KvCache::Create(model->config(), o);
  ASSERT_TRUE(eager.ok() && bucketed.ok());
  std::vector<int64_t> slots;
  const std::vector<int64_t> prompt_lengths = {5, 40, 60};
  // Occupy slots out of order: 4, 1, 2.
  for (KvCache* c : {eager->get(), bucketed->get()}) {
    for (int i = 0; i < 6; ++i) ASSERT_TRUE(c->Allocate().ok());
    for (int64_t s : {0, 3, 5}) ASSERT_TRUE(c->Free(s).ok());
  }
  slots = {4, 1, 2};
  for (size_t i = 0; i < slots.size(); ++i) {
    const at::Tensor ids = RandomIds(prompt_lengths[i], 300, 20 + i);
    for (KvCache* c : {eager->get(), bucketed->get()}) {
      ASSERT_TRUE(model->Prefill(*c, slots[i], ids, TextPositions(0, prompt_lengths[i])).ok());
    }
  }
  at::Tensor tokens = RandomIds(3, 40, 5);
  double worst = 0;
  for (int step = 0; step < 12; ++step) {
    std::vector<int64_t> pos;
    for (size_t i = 0; i < slots.size(); ++i) pos.push_back(prompt_lengths[i] + step);
    at::Tensor positions = at::tensor(pos, at::kLong);
    auto a = model->Decode(**eager, slots, tokens, positions);
    auto b = model->DecodeBucketed(**bucketed, slots, tokens, positions);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ(b->sizes(), a->sizes());
    worst = std::max(worst, RelativeError(*b, *a));
    tokens = a->argmax(1);
  }
  EXPECT_LE(worst, 1e-5);
  for (int64_t s : slots) EXPECT_EQ((*bucketed)->length(s), (*eager)->length(s));
  // A batch of one after the others left reuses the buckets and still agrees.
  auto a = model->Decode(**eager, {2}, tokens.narrow(0, 2, 1), at::tensor({72L}));
  auto b = model->DecodeBucketed(**bucketed, {2}, tokens.narrow(0, 2, 1), at::tensor({72L}));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_LE(RelativeError(*b, *a), 1e-5);
}


// On CUDA in bf16 the bucketed step runs the project's decode kernels (cuda/ar_decode.cu). They
// must agree with the ATen composition of the same step (to bf16 rounding) for batches that take
// the GEMV kernel (buckets 1-4) and those that take cuBLAS (8), with sequences whose keys span
// several attention chunks (128 keys each), and, for the GEMV buckets, give a sequence the
// same logits bit for bit whatever shares its step.
TEST(ArModelTest, FusedDecodeMatchesAtenOnCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (const auto& [heads, kv_heads] : {std::pair<int64_t, int64_t>{4, 2}, {32, 2}}) {
    SCOPED_TRACE(::testing::Message() << heads << " heads, " << kv_heads << " KV heads");
    ArConfig c = TinyConfig();
    c.hidden_size = 256;
    c.intermediate_size = 200;
    c.vision_vocab_size = 134;  // not a multiple of the GEMV's rows per block
    c.num_attention_heads = heads;
    c.num_key_value_heads = kv_heads;
    c.head_dim = 128;
    c.mrope_section = {8, 12, 12};
    c.max_position_embeddings = 1024;
    const WeightMap weights = InitSeeded(ArModel::Params(c), 31);
    ArModelOptions o{at::kBFloat16, at::Device(at::kCUDA, 0), 0};
    auto fused = ArModel::Create(c, weights, o);
    o.fused_decode = false;
    auto aten = ArModel::Create(c, weights, o);
    ASSERT_TRUE(fused.ok() && aten.ok());
    KvCacheOptions ko{6, 400, at::kBFloat16, at::Device(at::kCUDA, 0)};
    // Caches 0 and 1: the whole batch through each path; cache 2: one sequence alone (fused).
    std::vector<std::unique_ptr<KvCache>> caches;
    for (int i = 0; i < 3; ++i) {
      auto cache = KvCache::Create(c, ko);
      ASSERT_TRUE(cache.ok()) << cache.status();
      caches.push_back(std::move(*cache));
    }
    const std::vector<int64_t> lengths = {5, 130, 260, 17, 64};
    std::vector<int64_t> slots;
    for (size_t i = 0; i < lengths.size(); ++i) {
      const at::Tensor ids = RandomIds(lengths[i], 300, 40 + i);
      for (auto& cache : caches) {
        const int64_t slot = *cache->Allocate();
        if (&cache == &caches[0]) slots.push_back(slot);
        ASSERT_TRUE((*aten)->Prefill(*cache, slot, ids, TextPositions(0, lengths[i])).ok());
      }
    }
    double worst = 0;
    std::vector<int64_t> pos(lengths);
    // Buckets 4 and 1 (GEMV; sequence 0 alone must give the same bits), then 8 (cuBLAS).
    for (const size_t batch : {size_t{3}, size_t{1}, size_t{5}}) {
      const std::vector<int64_t> step_slots(slots.begin(), slots.begin() + batch);
      at::Tensor tokens = RandomIds(batch, c.vision_vocab_size, batch);
      for (int step = 0; step < 4; ++step) {
        const at::Tensor positions =
            at::tensor(std::vector<int64_t>(pos.begin(), pos.begin() + batch), at::kLong);
        auto a = (*fused)->DecodeBucketed(*caches[0], step_slots, tokens, positions);
        auto b = (*aten)->DecodeBucketed(*caches[1], step_slots, tokens, positions);
        ASSERT_TRUE(a.ok()) << a.status();
        ASSERT_TRUE(b.ok()) << b.status();
        worst = std::max(worst, RelativeError(a->to(at::kFloat).cpu(), b->to(at::kFloat).cpu()));
        if (batch <= 4) {
          auto alone = (*fused)->DecodeBucketed(*caches[2], {slots[0]}, tokens.narrow(0, 0, 1),
                                                positions.narrow(0, 0, 1));
          ASSERT_TRUE(alone.ok()) << alone.status();
          EXPECT_TRUE(at::equal(alone->cpu(), a->narrow(0, 0, 1).cpu())) << "batch " << batch;
        }
        tokens = b->argmax(1);
        for (size_t i = 0; i < batch; ++i) ++pos[i];
      }
    }
    std::printf("fused vs ATen decode, bf16: worst relative error %.3g\n", worst);
    EXPECT_LE(worst, 2e-2);
    for (int64_t s : slots) EXPECT_EQ(caches[0]->length(s), caches[1]->length(s));
  }
}


#if defined(DIFFMESH_WITH_CUDA)
// The decode attention kernel against a float reference written out here: rotary on q and the
// new key (rounded per operator as in bf16 ATen), the new entry written at each sequence's
// length, softmax attention over its slot's keys 0..L; sequences at lengths 0, 130 and 517
// (one to five chunks). Every heads-per-block choice gives the same bits.
TEST(ArDecodeKernelTest, AttentionMatchesReferenceForEveryHeadsPerBlock) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const int64_t b = 3, h = 32, hkv = 2, d = 128, rd = 64, cap = 600, num_slots = 4;
  const std::vector<int64_t> lengths = {0, 130, 517}, slot_ids = {2, 0, 3};
  const auto cuda_bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  auto gen = at::detail::createCPUGenerator(7);
  const at::Tensor qkv = at::randn({b, (h + 2 * hkv) * d}, gen).to(at::kBFloat16);
  const at::Tensor angle = at::randn({b, rd / 2}, gen) * 10;
  const at::Tensor cos = at::cat({angle.cos(), angle.cos()}, 1).to(at::kBFloat16);
  const at::Tensor sin = at::cat({angle.sin(), angle.sin()}, 1).to(at::kBFloat16);
  const at::Tensor k0 = at::randn({num_slots, hkv, cap, d}, gen).to(at::kBFloat16);
  const at::Tensor v0 = at::randn({num_slots, hkv, cap, d}, gen).to(at::kBFloat16);

  // Reference (CPU): bf16 rotary as ArModel's ATen path computes it, then fp32 attention.
  auto rotate = [&](const at::Tensor& x) {  // x [B, n, D] bf16
    at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
    at::Tensor rot = x.narrow(-1, 0, rd);
    at::Tensor half = at::cat({rot.narrow(-1, rd / 2, rd / 2).neg(), rot.narrow(-1, 0, rd / 2)}, -1);
    return at::cat({rot * c + half * s, x.narrow(-1, rd, d - rd)}, -1);
  };
  const at::Tensor q = rotate(qkv.narrow(1, 0, h * d).view({b, h, d}));
  const at::Tensor k_new = rotate(qkv.narrow(1, h * d, hkv * d).view({b, hkv, d}));
  const at::Tensor v_new = qkv.narrow(1, (h + hkv) * d, hkv * d).view({b, hkv, d});
  std::vector<at::Tensor> expected;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t len = lengths[i];
    at::Tensor keys = at::cat({k0[slot_ids[i]].narrow(1, 0, len), k_new[i].unsqueeze(1)}, 1);
    at::Tensor values = at::cat({v0[slot_ids[i]].narrow(1, 0, len), v_new[i].unsqueeze(1)}, 1);
    keys = keys.to(at::kFloat).repeat_interleave(h / hkv, 0);  // [H, L + 1, D]
    values = values.to(at::kFloat).repeat_interleave(h / hkv, 0);
    at::Tensor scores = at::matmul(q[i].to(at::kFloat).unsqueeze(1), keys.transpose(1, 2));
    at::Tensor probs = at::softmax(scores / std::sqrt(static_cast<double>(d)), -1);
    expected.push_back(at::matmul(probs, values).reshape({h * d}));
  }
  const at::Tensor reference = at::stack(expected);

  const at::Tensor slots_t = at::tensor(slot_ids, at::kLong).to(at::kCUDA);
  const at::Tensor lengths_t = at::tensor(lengths, at::kLong).to(at::kCUDA);
  const int splits = static_cast<int>((517 + 1 + cuda::kAttentionChunk - 1) / cuda::kAttentionChunk);
  const at::Tensor qkv_d = qkv.to(at::kCUDA), cos_d = cos.to(at::kCUDA), sin_d = sin.to(at::kCUDA);
  at::Tensor first;
  for (const int per_block : {0, 1, 2, 4, 8, 16}) {
    SCOPED_TRACE(::testing::Message() << "heads per block " << per_block);
    at::Tensor k_cache = k0.to(at::kCUDA), v_cache = v0.to(at::kCUDA);
    at::Tensor o_part = at::empty({b, h, splits, d}, cuda_bf16.dtype(at::kFloat));
    at::Tensor m_part = at::empty({b, h, splits}, cuda_bf16.dtype(at::kFloat));
    at::Tensor l_part = at::empty({b, h, splits}, cuda_bf16.dtype(at::kFloat));
    at::Tensor counters = at::zeros({b * h}, cuda_bf16.dtype(at::kInt));
    at::Tensor out = at::empty({b, h * d}, cuda_bf16);
    cuda::DecodeAttentionArgs a;
    a.qkv = qkv_d.data_ptr();
    a.cos = cos_d.data_ptr();
    a.sin = sin_d.data_ptr();
    a.k_cache = k_cache.data_ptr();
    a.v_cache = v_cache.data_ptr();
    a.slots = slots_t.data_ptr<int64_t>();
    a.lengths = lengths_t.data_ptr<int64_t>();
    a.o_partial = o_part.data_ptr<float>();
    a.m_partial = m_part.data_ptr<float>();
    a.l_partial = l_part.data_ptr<float>();
    a.counters = counters.data_ptr<int>();
    a.out = out.data_ptr();
    a.batch = b;
    a.heads = h;
    a.kv_heads = hkv;
    a.head_dim = d;
    a.rotary_dim = rd;
    a.capacity = cap;
    a.splits = splits;
    a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    a.heads_per_block = per_block;
    ASSERT_EQ(cuda::LaunchDecodeAttention(a, nullptr), cudaSuccess);
    const at::Tensor got = out.cpu();
    EXPECT_LE(RelativeError(got.to(at::kFloat), reference), 1e-2);
    if (!first.defined()) first = got;
    EXPECT_TRUE(at::equal(got, first));
    // The new entries landed at each sequence's length; nothing else changed.
    at::Tensor k_want = k0.clone(), v_want = v0.clone();
    for (int64_t i = 0; i < b; ++i) {
      k_want[slot_ids[i]].select(1, lengths[i]).copy_(k_new[i]);
      v_want[slot_ids[i]].select(1, lengths[i]).copy_(v_new[i]);
    }
    EXPECT_TRUE(at::equal(k_cache.cpu(), k_want));
    EXPECT_TRUE(at::equal(v_cache.cpu(), v_want));
    EXPECT_EQ(counters.sum().item<int64_t>(), 0) << "counters are left zero for the next layer";
  }
  cuda::DecodeAttentionArgs bad;
  bad.heads = 32;
  bad.kv_heads = 2;
  bad.head_dim = 64;  // only 128 is supported
  EXPECT_FALSE(cuda::DecodeAttentionSupports(bad.heads, bad.kv_heads, bad.head_dim, 32));
}
#endif  // DIFFMESH_WITH_CUDA

}  // namespace
}  // namespace diffmesh::models::glm_image
