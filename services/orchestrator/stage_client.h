// How the orchestrator calls a stage. Two transports implement it: gRPC (grpc_stage_client.h)
// and in-process calls into the stage cores (services/embedded), so `diffmesh generate` and the
// mesh share one orchestrator code path.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_CLIENT_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/call/call_context.h"
#include "common/call/thread_cache.h"
#include "diffmesh/v1/stages.pb.h"

namespace diffmesh {

class ArStageClient {
 public:
  virtual ~ArStageClient() = default;
  // Calls `on_chunk` for each token chunk in order; returns the stage's final status.
  virtual absl::Status Generate(CallContext& ctx, const v1::ArRequest& request,
                                const std::function<void(const v1::ArTokenChunk&)>& on_chunk) = 0;
  // Starts the call and returns: `on_chunk` runs for each chunk in order, then `done` once with
  // the final status, on the transport's threads; neither may block. `ctx` and `request` must
  // outlive the call. This default runs Generate on a reused thread; gRPC's callback API
  // needs none.
  using ChunkFn = std::function<void(const v1::ArTokenChunk&)>;
  using DoneFn = std::function<void(absl::Status)>;
  virtual void GenerateAsync(CallContext& ctx, const v1::ArRequest& request, ChunkFn on_chunk,
                             DoneFn done) {
    ThreadCache::Default().Run(
        [this, &ctx, &request, on_chunk = std::move(on_chunk), done = std::move(done)]() mutable {
          done(Generate(ctx, request, on_chunk));
        });
  }
};

class EncoderStageClient {
 public:
  virtual ~EncoderStageClient() = default;
  virtual absl::StatusOr<v1::EncodeResponse> Encode(CallContext& ctx,
                                                    const v1::EncodeRequest& request) = 0;
  // Starts the call and returns; `done` runs exactly once with its outcome, on one of the
  // transport's threads, and must not block. `ctx` and `request` must outlive the call. This
  // default runs Encode on a reused thread; a transport with its own asynchronous calls
  // (gRPC's callback API) overrides it and needs no thread at all.
  using EncodeDone = std::function<void(absl::StatusOr<v1::EncodeResponse>)>;
  virtual void EncodeAsync(CallContext& ctx, const v1::EncodeRequest& request, EncodeDone done) {
    ThreadCache::Default().Run([this, &ctx, &request, done = std::move(done)]() mutable {
      done(Encode(ctx, request));
    });
  }
};

// One streamed denoise call (DenoiseService.DenoiseStream): inputs go in while the stages
// before it still run, events come out once they are complete.
class DenoiseStream {
 public:
  virtual ~DenoiseStream() = default;
  // Hands over one input (the request first). Thread-safe. An error means the call has
  // already ended (Finish tells why).
  virtual absl::Status Send(const v1::DenoiseInput& input) = 0;
  // The end of the inputs: OK when every producer is done, else the first producer's error
  // (the stage then stops the request). Call once, before or during Finish.
  virtual void CloseInputs(absl::Status status) = 0;
  // Calls `on_event` for each step event and the result, in order (possibly on one of the
  // transport's threads, so it must not block); returns the call's status once every event
  // has been handled.
  virtual absl::Status Finish(const std::function<void(const v1::DenoiseEvent&)>& on_event) = 0;
};

class DenoiseStageClient {
 public:
  virtual ~DenoiseStageClient() = default;
  // Calls `on_event` for each step event and the result, in order.
  virtual absl::Status Denoise(CallContext& ctx, const v1::DenoiseRequest& request,
                               const std::function<void(const v1::DenoiseEvent&)>& on_event) = 0;
  // Opens a streamed call bound to `ctx` (deadline, cancellation), which must outlive it.
  virtual absl::StatusOr<std::unique_ptr<DenoiseStream>> OpenStream(CallContext& ctx) = 0;
};

// Hands out the client for a stage by the service name the pipeline config gives it.
class StageClientFactory {
 public:
  virtual ~StageClientFactory() = default;
  virtual absl::StatusOr<ArStageClient*> Ar(const std::string& service) = 0;
  virtual absl::StatusOr<EncoderStageClient*> Encoder(const std::string& service) = 0;
  virtual absl::StatusOr<DenoiseStageClient*> Denoise(const std::string& service) = 0;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_STAGE_CLIENT_H_
