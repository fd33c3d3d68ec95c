#include "services/ar/ar_core.h"

#include <ATen/ATen.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/tensor/wire_tensor.h"
#include "common/media/image_codec.h"
#include "models/glm_image/condition_image.h"
#include "models/glm_image/glm_image_spec.h"
#include "models/glm_image/vision_tokenizer.h"
#include "services/ar/sampler.h"
#include "services/stage_common/torch_errors.h"

namespace diffmesh {

using models::glm_image::ArModel;
using models::glm_image::ArPrompt;
using models::glm_image::GlmImageSpec;
using models::glm_image::KvCache;

namespace {

struct Sequence {
  CallContext* ctx = nullptr;
  const std::function<void(const v1::ArTokenChunk&)>* on_chunk = nullptr;
  ArPrompt prompt;
  // The condition images' AR grids, in prompt order (edit requests), and the grids the model
  // generates, in generation order (text-to-image: preview then target; edit: target).
  std::vector<models::glm_image::ImageGrid> sources;
  std::vector<models::glm_image::ImageGrid> generated_grids;
  // Per condition image its prior-token grid, streamed with the first chunk.
  std::vector<v1::Tensor> condition_grids;
  at::Generator generator;
  int64_t slot = -1;
  at::Tensor gen_positions;         // [3, max_new_tokens] int64
  std::vector<int32_t> generated;   // grid tokens so far (the end token is appended at the end)
  int emitted = 0;                  // tokens already streamed
  std::promise<absl::Status> done;
};

// What image editing needs on the AR side: the vision tokenizer and the image processor of the
// served model. A model without them (a snapshot written without vision weights) still serves
// text-to-image; `why_not` says what was missing.
struct EditSupport {
  std::shared_ptr<models::glm_image::GlmImageVisionTokenizer> vision;
  models::glm_image::ArImageProcessorConfig processor;
  media::DecodeLimits limits;
  std::string why_not;
};

}  // namespace

class ArCore::Impl {
 public:
  Impl(const Options& options, GlmImageSpec spec,
       std::optional<models::glm_image::ArTextTokenizer> text_tokenizer,
       std::unique_ptr<ArModel> model, std::unique_ptr<KvCache> cache, EditSupport edit)
      : options_(options), spec_(std::move(spec)), text_tokenizer_(std::move(text_tokenizer)),
        model_(std::move(model)), cache_(std::move(cache)), edit_(std::move(edit)),
        codebook_size_(model_->config().image_start_token_id) {
    scheduler_ = std::thread([this] { Loop(); });
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    scheduler_.join();
  }

  absl::Status Generate(CallContext& ctx, const v1::ArRequest& request,
                        const std::function<void(const v1::ArTokenChunk&)>& on_chunk) {
    if (request.model() != spec_.name) {
      return absl::NotFoundError(absl::StrCat("model: this AR service serves '", spec_.name,
                                              "', not '", request.model(), "'"));
    }
    if (request.height() > options_.max_image_size || request.width() > options_.max_image_size) {
      return absl::InvalidArgumentError(absl::StrCat("height/width: this AR service serves at most ",
                                                     options_.max_image_size, " pixels a side"));
    }
    auto seq = std::make_shared<Sequence>();
    if (request.inputs_size() > 0) {
      RETURN_IF_ERROR(PrepareEdit(request, *seq));
    } else {
      ASSIGN_OR_RETURN(seq->prompt,
                       text_tokenizer_
                           ? models::glm_image::BuildTextToImagePrompt(
                                 *text_tokenizer_, request.prompt(), request.height(), request.width())
                           : models::glm_image::BuildTextToImagePrompt(
                                 spec_.tokenizer, request.prompt(), request.height(), request.width()));
      seq->generated_grids = {seq->prompt.preview, seq->prompt.target};
    }
    if (static_cast<int64_t>(seq->prompt.ids.size()) + seq->prompt.max_new_tokens > cache_->capacity()) {
      return absl::InvalidArgumentError(absl::StrCat("prompt: ", seq->prompt.ids.size(),
                                                     " tokens do not fit the AR cache"));
    }
    seq->ctx = &ctx;
    seq->on_chunk = &on_chunk;
    seq->generator = at::detail::createCPUGenerator(request.seed());
    std::future<absl::Status> done = seq->done.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::UnavailableError("AR service is shutting down");
      if (static_cast<int>(waiting_.size()) >= options_.max_queue) {
        return absl::ResourceExhaustedError(absl::StrCat("AR queue is full (", options_.max_queue,
                                                         " requests waiting)"));
      }
      waiting_.push_back(seq);
    }
    cv_.notify_all();
    return done.get();
  }

  const std::string& model() const { return spec_.name; }

  // An edit request's prompt: each image through the AR model's vision side (VQ tokens) into
  // the image-to-image prompt, as GlmImagePipeline builds it; its grids for the DiT.
  absl::Status PrepareEdit(const v1::ArRequest& request, Sequence& seq) {
    if (edit_.vision == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "inputs: this AR service serves '", spec_.name, "' without its vision tokenizer (",
          edit_.why_not, ")"));
    }
    if (text_tokenizer_) {
      return absl::UnimplementedError(
          "inputs: image editing with a BPE-vocabulary snapshot's prompt template is not "
          "implemented (byte-vocabulary models only)");
    }
    std::vector<at::Tensor> pixel_values;
    for (int i = 0; i < request.inputs_size(); ++i) {
      const v1::InputMedia& in = request.inputs(i);
      const std::string field = absl::StrCat("inputs[", i, "]");
      if (in.role() != v1::MEDIA_ROLE_EDIT_IMAGE) {
        return absl::InvalidArgumentError(field + ".role: this AR stage takes images to edit only");
      }
      auto rgb = media::DecodeImage(in.data(), edit_.limits);
      if (!rgb.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ".data: ", rgb.status().message()));
      ASSIGN_OR_RETURN(auto image, models::glm_image::PreprocessArConditionImage(
                                       edit_.processor, rgb->pixels.data(), rgb->width, rgb->height));
      pixel_values.push_back(image.pixel_values);
      seq.sources.push_back(image.grid);
    }
    ASSIGN_OR_RETURN(at::Tensor tokens, edit_.vision->ImageTokens(at::cat(pixel_values, 0), seq.sources));
    ASSIGN_OR_RETURN(auto prompt, models::glm_image::BuildImageToImagePrompt(
                                      spec_.tokenizer, model_->config(), request.prompt(),
                                      seq.sources, request.height(), request.width()));
    tokens = tokens.to(at::kLong).contiguous();
    const std::vector<int64_t> token_list(tokens.data_ptr<int64_t>(),
                                          tokens.data_ptr<int64_t>() + tokens.numel());
    ASSIGN_OR_RETURN(seq.prompt.ids, models::glm_image::PlaceImageTokens(
                                         prompt.ids, model_->config().image_token_id, token_list));
    seq.prompt.target = prompt.target;
    seq.prompt.max_new_tokens = prompt.max_new_tokens;
    seq.generated_grids = {prompt.target};
    int64_t start = 0;
    for (const auto& g : seq.sources) {
      const int64_t n = g.height * g.width;
      seq.condition_grids.push_back(MakeTensor(DType::kInt64, {g.height, g.width},
                                               token_list.data() + start, n * sizeof(int64_t)));
      start += n;
    }
    return absl::OkStatus();
  }

  Stats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    Stats s;
    s.running = running_;
    s.waiting = static_cast<int>(waiting_.size());
    s.free_slots = static_cast<int>(cache_->max_slots()) - running_;
    return s;
  }

 private:
  void Finish(const std::shared_ptr<Sequence>& seq, absl::Status status) {
    if (seq->slot >= 0) {
      cache_->Free(seq->slot).IgnoreError();
      seq->slot = -1;
      std::lock_guard<std::mutex> lock(mu_);
      --running_;
    }
    seq->done.set_value(std::move(status));
  }

  // Streams what is new; on the last call also the end token and the prior-token grid.
  void Emit(Sequence& seq, bool last) {
    const int total = static_cast<int>(seq.prompt.max_new_tokens);
    v1::ArTokenChunk chunk;
    chunk.set_offset(seq.emitted);
    chunk.set_total(total);
    if (seq.emitted == 0) {
      // Generation order: preview grid, target grid, end token. Consumers take the prior
      // grid's place from here.
      const auto& t = seq.prompt.target;
      v1::TokenGrid* grid = chunk.mutable_grid();
      grid->set_height(static_cast<int32_t>(t.height));
      grid->set_width(static_cast<int32_t>(t.width));
      grid->set_offset(static_cast<int32_t>(total - 1 - t.height * t.width));
      for (const v1::Tensor& g : seq.condition_grids) *chunk.add_condition_prior_tokens() = g;
    }
    for (size_t i = seq.emitted; i < seq.generated.size(); ++i) chunk.add_tokens(seq.generated[i]);
    seq.emitted = static_cast<int>(seq.generated.size());
    if (last) {
      chunk.set_done(true);
      const auto& t = seq.prompt.target;
      const int64_t n = t.height * t.width;
      std::vector<int64_t> grid(seq.generated.end() - n, seq.generated.end());
      *chunk.mutable_prior_tokens() =
          MakeTensor(DType::kInt64, {t.height, t.width}, grid.data(), grid.size() * sizeof(int64_t));
      chunk.add_tokens(static_cast<int32_t>(model_->config().image_end_token_id));
      seq.emitted++;
    }
    (*seq.on_chunk)(chunk);
  }

  // Records a sampled token; finishes the sequence when its grids are complete.
  // Returns true while the sequence stays in the batch.
  bool Accept(const std::shared_ptr<Sequence>& seq, int32_t token) {
    seq->generated.push_back(token);
    const int64_t grid_tokens = seq->prompt.max_new_tokens - 1;
    if (static_cast<int64_t>(seq->generated.size()) == grid_tokens) {
      // The end token closes the image; nothing samples it, so no decode step is spent on it.
      Emit(*seq, /*last=*/true);
      Finish(seq, absl::OkStatus());
      return false;
    }
    if (static_cast<int>(seq->generated.size()) - seq->emitted >= options_.chunk_tokens) {
      Emit(*seq, /*last=*/false);
    }
    return true;
  }

  absl::Status Admit(const std::shared_ptr<Sequence>& seq) {
    RETURN_IF_ERROR(seq->ctx->Check("ar"));
    ASSIGN_OR_RETURN(seq->slot, cache_->Allocate());
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++running_;
    }
    at::Tensor ids = at::tensor(seq->prompt.ids, at::kLong);
    ASSIGN_OR_RETURN(auto prompt_pos,
                     models::glm_image::PromptPositions(model_->config(), ids, seq->sources));
    seq->gen_positions =
        models::glm_image::GenerationPositions(prompt_pos.next_position, seq->generated_grids);
    ASSIGN_OR_RETURN(at::Tensor logits, model_->Prefill(*cache_, seq->slot, ids, prompt_pos.positions));
    at::Tensor token = SampleTokens(logits.unsqueeze(0), codebook_size_, spec_.sampling,
                                    {&seq->generator});
    Accept(seq, static_cast<int32_t>(token[0].item<int64_t>()));  // may finish a 1-token grid
    return absl::OkStatus();
  }

  void Loop() {
    std::vector<std::shared_ptr<Sequence>> active;
    while (true) {
      std::deque<std::shared_ptr<Sequence>> admit;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !waiting_.empty() || !active.empty(); });
        if (stopping_) {
          std::deque<std::shared_ptr<Sequence>> left;
          left.swap(waiting_);
          lock.unlock();
          for (auto& s : left) Finish(s, absl::UnavailableError("AR service is shutting down"));
          for (auto& s : active) Finish(s, absl::UnavailableError("AR service is shutting down"));
          return;
        }
        while (!waiting_.empty() && static_cast<int64_t>(active.size() + admit.size()) < cache_->max_slots()) {
          admit.push_back(waiting_.front());
          waiting_.pop_front();
        }
      }
      // Join at a token boundary: prefill the newcomers.
      for (auto& seq : admit) {
        absl::Status s = CatchTorchErrors("ar prefill", [&] { return Admit(seq); });
        if (!s.ok()) {
          Finish(seq, s);
        } else if (seq->slot >= 0) {
          active.push_back(seq);
        }
      }
      // Leave at a token boundary: cancelled or past their deadline.
      std::vector<std::shared_ptr<Sequence>> running;
      for (auto& seq : active) {
        absl::Status s = seq->ctx->Check("ar");
        if (s.ok()) {
          running.push_back(seq);
        } else {
          Finish(seq, s);
        }
      }
      active.swap(running);
      if (active.empty()) continue;

      // One decode step for the whole batch.
      std::vector<int64_t> slots, tokens;
      std::vector<at::Tensor> positions;
      std::vector<at::Generator*> generators;
      for (auto& seq : active) {
        slots.push_back(seq->slot);
        tokens.push_back(seq->generated.back());
        positions.push_back(seq->gen_positions.select(1, static_cast<int64_t>(seq->generated.size()) - 1));
        generators.push_back(&seq->generator);
      }
      // On the GPU the step is a CUDA graph per batch/length bucket; on the CPU the eager step
      // reads only the keys each slot needs. An exception (this thread has no handler: it
      // would end the process) fails the batch's requests instead.
      at::Tensor sampled;
      absl::Status step = CatchTorchErrors("ar decode", [&]() -> absl::Status {
        auto logits = options_.cuda
                          ? model_->DecodeBucketed(*cache_, slots, at::tensor(tokens, at::kLong),
                                                   at::stack(positions, 1))
                          : model_->Decode(*cache_, slots, at::tensor(tokens, at::kLong),
                                           at::stack(positions, 1));
        if (!logits.ok()) return logits.status();
        sampled = SampleTokens(*logits, codebook_size_, spec_.sampling, generators);
        return absl::OkStatus();
      });
      if (!step.ok()) {
        for (auto& seq : active) Finish(seq, step);
        active.clear();
        continue;
      }
      auto next = sampled.accessor<int64_t, 1>();
      std::vector<std::shared_ptr<Sequence>> still;
      for (size_t i = 0; i < active.size(); ++i) {
        if (Accept(active[i], static_cast<int32_t>(next[i]))) still.push_back(active[i]);
      }
      active.swap(still);
    }
  }

  const Options options_;
  const GlmImageSpec spec_;
  // The snapshot's BPE tokenizer; unset where spec_.tokenizer's byte tokens encode prompts.
  const std::optional<models::glm_image::ArTextTokenizer> text_tokenizer_;
  std::unique_ptr<ArModel> model_;
  std::unique_ptr<KvCache> cache_;
  const EditSupport edit_;
  const int64_t codebook_size_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  int running_ = 0;  // guarded by mu_
  std::deque<std::shared_ptr<Sequence>> waiting_;
  bool stopping_ = false;
  std::thread scheduler_;
};

absl::StatusOr<std::unique_ptr<ArCore>> ArCore::Create(const Options& options) {
  if (options.max_batch < 1 || options.max_queue < 0 || options.chunk_tokens < 1) {
    return absl::InvalidArgumentError("ArCore: max_batch and chunk_tokens must be >= 1");
  }
  ASSIGN_OR_RETURN(GlmImageSpec spec,
                   models::glm_image::ResolveSpec(options.model, options.model_dir));
  Options resolved = options;
  if (resolved.max_image_size <= 0) resolved.max_image_size = spec.max_image_size;
  // A snapshot with a real BPE vocabulary (processor/tokenizer.json with merges) encodes prompts
  // with it, exactly as the reference processor does; byte vocabularies use spec.tokenizer.
  std::optional<models::glm_image::ArTextTokenizer> text_tokenizer;
  if (!spec.byte_tokens) {
    ASSIGN_OR_RETURN(text_tokenizer,
                     models::glm_image::LoadArTextTokenizer(
                         std::filesystem::path(spec.ar_tokenizer_json).parent_path().string()));
  }
  models::glm_image::ArModelOptions model_options;
  if (options.cuda) {
    if (!at::hasCUDA()) return absl::FailedPreconditionError("--device cuda: no CUDA device here");
    model_options.dtype = at::kBFloat16;
    model_options.device = at::Device(at::kCUDA, 0);
  }
  ASSIGN_OR_RETURN(auto model, models::glm_image::BuildArModel(spec, model_options));
  // Capacity: the longest prompt plus the grids of the largest image.
  ASSIGN_OR_RETURN(auto sizing, models::glm_image::BuildTextToImagePrompt(
                                    spec.tokenizer, "", resolved.max_image_size, resolved.max_image_size));
  const int64_t max_prompt_tokens =
      text_tokenizer ? text_tokenizer->max_prompt_tokens : spec.tokenizer.max_prompt_tokens;
  if (text_tokenizer) {
    // Every id the prompt template itself adds must be a row of the model's embedding.
    const int64_t vocab = model->config().vocab_size;
    for (const std::string* t : {&text_tokenizer->grid_bos_token, &text_tokenizer->grid_eos_token,
                                 &text_tokenizer->bos_token}) {
      const int64_t id = text_tokenizer->bpe->TokenToId(*t).value_or(-1);
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat(
            spec.ar_tokenizer_json, ": token \"", *t, "\" has id ", id,
            ", outside the AR model's vocabulary of ", vocab, " (vision_language_encoder/config.json)"));
      }
    }
  }
  models::glm_image::KvCacheOptions cache_options;
  cache_options.max_slots = options.max_batch;
  cache_options.capacity = max_prompt_tokens + sizing.max_new_tokens;
  cache_options.dtype = model_options.dtype;
  cache_options.device = model_options.device;
  if (options.kv_cache_memory_bytes > 0) {
    const auto& c = model->config();
    const int64_t per_slot = c.num_hidden_layers * 2 * c.num_key_value_heads * cache_options.capacity *
                             c.head_dim * static_cast<int64_t>(c10::elementSize(model_options.dtype));
    const int64_t slots = options.kv_cache_memory_bytes / per_slot;
    if (slots < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kv_cache_memory: ", options.kv_cache_memory_bytes, " bytes hold no sequence of ",
          cache_options.capacity, " tokens (", per_slot, " bytes each)"));
    }
    cache_options.max_slots = std::min<int64_t>(slots, options.max_batch);
  }
  ASSIGN_OR_RETURN(auto cache, KvCache::Create(model->config(), cache_options));
  EditSupport edit;
  // fp32 on the CPU: the vision tower runs once per edit request, beside the decode loop.
  auto vision = models::glm_image::BuildVisionTokenizer(spec);
  auto processor = models::glm_image::BuildArImageProcessorConfig(spec);
  if (vision.ok() && processor.ok()) {
    edit.vision = std::move(*vision);
    edit.processor = *processor;
  } else {
    edit.why_not = std::string(!vision.ok() ? vision.status().message() : processor.status().message());
  }
  return std::unique_ptr<ArCore>(new ArCore(
      std::make_unique<Impl>(resolved, std::move(spec), std::move(text_tokenizer),
                             std::move(model), std::move(cache), std::move(edit))));
}

ArCore::ArCore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ArCore::~ArCore() = default;

absl::Status ArCore::Generate(CallContext& ctx, const v1::ArRequest& request,
                              const std::function<void(const v1::ArTokenChunk&)>& on_chunk) {
  // The exception boundary (the request's own torch work before it joins the batch); the
  // scheduler's batch steps have theirs in Loop.
  return CatchTorchErrors("ar", [&] { return impl_->Generate(ctx, request, on_chunk); });
}

const std::string& ArCore::model() const { return impl_->model(); }

ArCore::Stats ArCore::stats() const { return impl_->stats(); }

}  // namespace diffmesh
