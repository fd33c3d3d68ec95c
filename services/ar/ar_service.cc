#include "services/ar/ar_service.h"

#include "absl/time/clock.h"
#include "common/metrics/families.h"
#include "common/metrics/metrics.h"
#include "common/rpc/stage_token.h"
#include "common/rpc/streaming_call.h"
#include "common/status/grpc_status.h"

namespace diffmesh {

// The service serves one model: its series are looked up once.
struct ArTokenService::Metrics {
  Metrics(prometheus::Registry& registry, const std::string& model)
      : calls(registry),
        ar(registry),
        time_to_first_token(
            ar.time_to_first_token.Add({{"model", model}}, metrics::LatencyBuckets())),
        time_per_token(ar.time_per_token.Add({{"model", model}}, metrics::TokenBuckets())),
        tokens(ar.tokens.Add({{"model", model}})) {}

  metrics::StageServiceFamilies calls;
  metrics::ArFamilies ar;
  prometheus::Histogram& time_to_first_token;
  prometheus::Histogram& time_per_token;
  prometheus::Counter& tokens;
};

namespace {

// Times one call's token stream; OnChunk runs on the AR scheduler thread, in order.
class StreamTimer {
 public:
  StreamTimer(prometheus::Histogram& time_to_first_token, prometheus::Histogram& time_per_token,
              prometheus::Counter& tokens)
      : time_to_first_token_(time_to_first_token),
        time_per_token_(time_per_token),
        tokens_(tokens),
        start_(absl::Now()) {}

  void OnChunk(const v1::ArTokenChunk& chunk) {
    const absl::Time now = absl::Now();
    tokens_.Increment(chunk.tokens_size());
    streamed_ += chunk.tokens_size();
    if (first_chunk_ == absl::InfinitePast()) {
      first_chunk_ = now;
      first_tokens_ = chunk.tokens_size();
      time_to_first_token_.Observe(absl::ToDoubleSeconds(now - start_));
    } else if (chunk.done() && streamed_ > first_tokens_) {
      // Tokens come in chunks: the decode time per token is what the chunks after the first
      // took, over the tokens they carried.
      time_per_token_.Observe(absl::ToDoubleSeconds(now - first_chunk_) /
                              static_cast<double>(streamed_ - first_tokens_));
    }
  }

 private:
  prometheus::Histogram& time_to_first_token_;
  prometheus::Histogram& time_per_token_;
  prometheus::Counter& tokens_;
  const absl::Time start_;
  absl::Time first_chunk_ = absl::InfinitePast();
  int64_t first_tokens_ = 0;
  int64_t streamed_ = 0;
};

}  // namespace

ArTokenService::ArTokenService(ArCore* core, prometheus::Registry* registry)
    : core_(core),
      metrics_(registry != nullptr ? std::make_unique<Metrics>(*registry, core->model())
                                   : nullptr) {}

ArTokenService::~ArTokenService() = default;

grpc::ServerWriteReactor<v1::ArTokenChunk>* ArTokenService::Generate(
    grpc::CallbackServerContext* ctx, const v1::ArRequest* request) {
  // Before any work: only the orchestrator (the stage token's holder) is served.
  if (absl::Status auth = CheckCallToken(auth_, *ctx); !auth.ok()) {
    return RejectedWrite<v1::ArTokenChunk>(ToGrpcStatus(auth));
  }
  return StreamingCall<v1::ArTokenChunk>::Start(
      ctx, [this, request](CallContext& call, const StreamingCall<v1::ArTokenChunk>::Emit& emit) {
        if (metrics_ == nullptr) {
          return core_->Generate(call, *request, [&emit](const v1::ArTokenChunk& c) { emit(c); });
        }
        metrics::StageCallTracker tracker(&metrics_->calls, metrics::kStageAr);
        StreamTimer timer(metrics_->time_to_first_token, metrics_->time_per_token,
                          metrics_->tokens);
        absl::Status s = core_->Generate(call, *request, [&](const v1::ArTokenChunk& c) {
          timer.OnChunk(c);
          emit(c);
        });
        tracker.Finish(s);
        return s;
      },
      max_request_time_);
}

grpc::ServerUnaryReactor* ArTokenService::Describe(grpc::CallbackServerContext* ctx,
                                                   const v1::DescribeRequest*,
                                                   v1::StageDescription* response) {
  return AnswerAtOnce(auth_, ctx, [&] {
    response->add_kinds("ar");
    v1::ServedModel* served = response->add_models();
    served->set_name(core_->model());
    served->set_family("glm_image");  // the AR stage runs GLM-Image's AR model only
  });
}

}  // namespace diffmesh
