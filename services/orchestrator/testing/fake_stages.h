// Scriptable in-memory stages for orchestrator tests.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_TESTING_FAKE_STAGES_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_TESTING_FAKE_STAGES_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/output/output_chunks.h"
#include "services/orchestrator/stage_client.h"

namespace diffmesh::testing {

class FakeStages final : public StageClientFactory, public ArStageClient,
                         public EncoderStageClient, public DenoiseStageClient {
 public:
  // Behaviour knobs.
  int ar_tokens = 40;
  int ar_chunk = 16;
  absl::Status ar_error;          // returned after the first chunk when set
  bool ar_block_until_cancel = false;
  absl::Status encoder_error;
  absl::Status denoise_error;
  // The image the denoise stage returns (as OUTPUT_FORMAT_PNG, in chunks).
  std::string png = std::string("\x89PNG fake image bytes", 21);
  // The prior grid's side (square): the last grid_side² tokens before the end token.
  int grid_side = 2;
  // The denoise stage's output when set (e.g. a video), instead of the PNG image's; its bytes
  // are `png`'s.
  std::optional<v1::OutputInfo> denoise_output;
  // What the denoise stage reports having waited for its group (Result.queue_seconds).
  double denoise_queue_seconds = 0;

  std::atomic<bool> ar_saw_cancel{false};
  std::atomic<int> ar_calls{0};
  // The last denoise request: whole, or assembled from a stream's inputs.
  v1::DenoiseRequest last_denoise;
  // The inputs of the last streamed call, in the order they were sent, and how it ended.
  std::vector<v1::DenoiseInput> streamed;
  absl::Status stream_close_status;
  int whole_denoise_calls = 0;

  absl::StatusOr<ArStageClient*> Ar(const std::string&) override { return this; }
  absl::StatusOr<EncoderStageClient*> Encoder(const std::string&) override { return this; }
  absl::StatusOr<DenoiseStageClient*> Denoise(const std::string&) override { return this; }

  absl::Status Generate(CallContext& ctx, const v1::ArRequest& request,
                        const std::function<void(const v1::ArTokenChunk&)>& on_chunk) override {
    ++ar_calls;
    for (int off = 0; off < ar_tokens; off += ar_chunk) {
      if (absl::Status s = ctx.Check("ar"); !s.ok()) {
        ar_saw_cancel = true;
        return s;
      }
      v1::ArTokenChunk c;
      c.set_offset(off);
      c.set_total(ar_tokens);
      for (int i = off; i < std::min(off + ar_chunk, ar_tokens); ++i) c.add_tokens(i);
      c.set_done(off + ar_chunk >= ar_tokens);
      if (off == 0) {
        c.mutable_grid()->set_height(grid_side);
        c.mutable_grid()->set_width(grid_side);
        c.mutable_grid()->set_offset(ar_tokens - 1 - grid_side * grid_side);
      }
      if (c.done()) {
        int64_t grid[4] = {1, 2, 3, static_cast<int64_t>(request.seed() % 7)};
        c.mutable_prior_tokens()->set_dtype(v1::INT64);
        c.mutable_prior_tokens()->add_shape(2);
        c.mutable_prior_tokens()->add_shape(2);
        c.mutable_prior_tokens()->set_data(grid, sizeof(grid));
      }
      on_chunk(c);
      if (!ar_error.ok()) return ar_error;
      while (ar_block_until_cancel && !ctx.cancelled()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<v1::EncodeResponse> Encode(CallContext&, const v1::EncodeRequest& r) override {
    if (!encoder_error.ok()) return encoder_error;
    v1::EncodeResponse out;
    float v[2] = {1.0f, static_cast<float>(r.prompt().size())};
    out.mutable_prompt_embeds()->set_dtype(v1::FLOAT32);
    out.mutable_prompt_embeds()->add_shape(1);
    out.mutable_prompt_embeds()->add_shape(2);
    out.mutable_prompt_embeds()->set_data(v, sizeof(v));
    return out;
  }

  absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& r,
                       const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
    if (!r.has_decode()) ++whole_denoise_calls;  // decode stage calls are counted apart
    return Run(ctx, r, on_event);
  }

  // A streamed call: keeps the inputs; at Finish assembles the request (the grid is the last
  // grid-sized run of AR tokens before the end token) and answers as Denoise does.
  class Stream final : public DenoiseStream {
   public:
    Stream(FakeStages* stages, CallContext& ctx) : stages_(stages), ctx_(ctx) {
      stages_->streamed.clear();
    }
    absl::Status Send(const v1::DenoiseInput& in) override {
      std::lock_guard<std::mutex> lock(mu_);
      stages_->streamed.push_back(in);
      // A failing denoise stage ends the call at once; the sender learns it here.
      return stages_->denoise_error.ok() ? absl::OkStatus()
                                         : absl::UnavailableError("the denoise call has ended");
    }
    void CloseInputs(absl::Status status) override {
      std::lock_guard<std::mutex> lock(mu_);
      stages_->stream_close_status = status;
    }
    absl::Status Finish(const std::function<void(const v1::DenoiseEvent&)>& on_event) override {
      if (!stages_->denoise_error.ok()) return stages_->denoise_error;
      if (!stages_->stream_close_status.ok()) return absl::CancelledError("inputs failed");
      v1::DenoiseRequest r;
      std::vector<int32_t> tokens;
      v1::TokenGrid g;
      for (const auto& in : stages_->streamed) {
        if (in.has_request()) r = in.request();
        if (in.has_ar_tokens()) {
          if (in.ar_tokens().has_grid()) g = in.ar_tokens().grid();
          tokens.insert(tokens.end(), in.ar_tokens().tokens().begin(), in.ar_tokens().tokens().end());
        }
        if (in.has_embeddings()) {
          *r.mutable_prompt_embeds() = in.embeddings().prompt_embeds();
          *r.mutable_negative_prompt_embeds() = in.embeddings().negative_prompt_embeds();
        }
      }
      const int64_t gh = g.height(), gw = g.width(), n = gh * gw;
      std::vector<int64_t> grid;
      for (int64_t i = g.offset(); i < g.offset() + n && i < static_cast<int64_t>(tokens.size());
           ++i) {
        grid.push_back(tokens[i]);
      }
      r.mutable_prior_tokens()->set_dtype(v1::INT64);
      r.mutable_prior_tokens()->add_shape(gh);
      r.mutable_prior_tokens()->add_shape(gw);
      r.mutable_prior_tokens()->set_data(grid.data(), grid.size() * sizeof(int64_t));
      return stages_->Run(ctx_, r, on_event);
    }

   private:
    FakeStages* stages_;
    CallContext& ctx_;
    std::mutex mu_;
  };
  absl::StatusOr<std::unique_ptr<DenoiseStream>> OpenStream(CallContext& ctx) override {
    return std::make_unique<Stream>(this, ctx);
  }

  absl::Status Run(CallContext& ctx, const v1::DenoiseRequest& r,
                   const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    if (r.has_decode()) return Decode(r, on_event);
    last_denoise = r;
    if (!denoise_error.ok()) return denoise_error;
    for (int i = 1; i <= r.steps(); ++i) {
      if (absl::Status s = ctx.Check("denoise"); !s.ok()) return s;
      v1::DenoiseEvent e;
      e.mutable_progress()->set_unit("step");
      e.mutable_progress()->set_done(i);
      e.mutable_progress()->set_total(r.steps());
      on_event(e);
    }
    v1::DenoiseEvent e;
    e.mutable_result()->set_denoise_seconds(0.5);
    e.mutable_result()->set_queue_seconds(denoise_queue_seconds);
    if (r.output().format() == v1::OUTPUT_FORMAT_LATENTS) {  // a decode stage follows
      EmitLatents(r, on_event);
    } else {
      EmitImage(r, on_event);
      e.mutable_result()->set_vae_decode_seconds(0.25);
    }
    on_event(e);
    return absl::OkStatus();
  }

  // A "decode" stage call: the image from the latents a denoise call made.
  v1::DenoiseRequest last_decode;
  int decode_calls = 0;
  absl::Status decode_error;
  absl::Status Decode(const v1::DenoiseRequest& r,
                      const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    last_decode = r;
    ++decode_calls;
    if (!decode_error.ok()) return decode_error;
    if (!r.latents().has_image_latents()) {
      return absl::InvalidArgumentError("latents.image_latents: missing");
    }
    EmitImage(r, on_event);
    v1::DenoiseEvent e;
    e.mutable_result()->set_vae_decode_seconds(0.25);
    on_event(e);
    return absl::OkStatus();
  }

 private:
  void EmitImage(const v1::DenoiseRequest& r,
                 const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    v1::OutputInfo info;
    info.set_name("image");
    info.set_kind(v1::OUTPUT_KIND_IMAGE);
    info.set_mime_type("image/png");
    info.set_width(r.width());
    info.set_height(r.height());
    if (denoise_output.has_value()) info = *denoise_output;
    Emit(info, png, on_event);
  }

  // FLOAT32 [1, 1, h, w] latents named as an image model's LATENTS output ("latents"), h × w
  // the request's size / 8, each value the seed.
  void EmitLatents(const v1::DenoiseRequest& r,
                   const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    const int h = std::max(1, r.height() / 8), w = std::max(1, r.width() / 8);
    std::vector<float> values(static_cast<size_t>(h) * w, static_cast<float>(r.seed() % 1000));
    v1::OutputInfo info;
    info.set_name("latents");
    info.set_kind(v1::OUTPUT_KIND_TENSOR);
    info.set_tensor_dtype(v1::FLOAT32);
    for (int d : {1, 1, h, w}) info.add_tensor_shape(d);
    Emit(info, std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4),
         on_event);
  }

  static void Emit(const v1::OutputInfo& info, const std::string& data,
                   const std::function<void(const v1::DenoiseEvent&)>& on_event) {
    ForEachOutputChunk(info, data, [&](v1::OutputChunk&& chunk) {
      v1::DenoiseEvent e;
      *e.mutable_output() = std::move(chunk);
      on_event(e);
    });
  }
};

}  // namespace diffmesh::testing

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_TESTING_FAKE_STAGES_H_
