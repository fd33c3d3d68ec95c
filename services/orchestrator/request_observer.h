// What OrchestratorCore reports about each request, for metrics. The core stays free of any
// metrics library: main.cc injects a Prometheus implementation (prometheus_observer.h), tests
// a recording one.
#ifndef DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_OBSERVER_H_
#define DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_OBSERVER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace diffmesh {

// Calls for one request come in this order: RequestArrived, then (once validated)
// RequestAccepted, FirstStageStarted, FirstProgress and any number of StageFinished /
// StageBytes, MediaGenerated with the result, and always RequestFinished last. StageFinished and StageBytes may come from two
// threads at once (the encoder runs beside the AR stage), and requests run concurrently:
// implementations must be thread-safe. `model` is always a model of the pipeline config, or
// "unknown" for a request naming a model the pipeline does not serve.
class RequestObserver {
 public:
  virtual ~RequestObserver() = default;

  // A Generate call arrived (before validation).
  virtual void RequestArrived() = 0;
  // It passed validation.
  virtual void RequestAccepted(const std::string& model) = 0;
  // Its first stage started, `queue_seconds` after arrival (the orchestrator's part of its
  // queue time; the whole is Outcome::queue_seconds).
  virtual void FirstStageStarted(const std::string& model, double queue_seconds) = 0;
  // Its first progress event (AR tokens or a denoise step) was emitted `seconds` after arrival.
  virtual void FirstProgress(const std::string& model, double seconds) = 0;
  // A stage finished successfully. `stage`: ar, encoder, denoise, vae_decode or transfer (the
  // denoise call's time beyond the compute the stage reported).
  virtual void StageFinished(const std::string& model, const std::string& stage,
                             double seconds) = 0;
  // Serialized bytes of a message sent to (`sent`) or received from a stage.
  virtual void StageBytes(const std::string& stage, bool sent, int64_t bytes) = 0;

  // What a successful request's video and sound outputs hold (image outputs count nothing).
  struct Media {
    int64_t video_frames = 0;
    double video_seconds = 0;  // playing time: frames / frame rate
    double audio_seconds = 0;
  };
  // Its result was emitted `seconds` after arrival with this media (called only when it holds
  // video or sound).
  virtual void MediaGenerated(const std::string& model, const Media& media, double seconds) = 0;

  struct Outcome {
    std::string model;
    absl::StatusCode code = absl::StatusCode::kOk;
    // Arrival to the end of the call.
    double seconds = 0;
    // Time it waited to run: arrival to its first stage's start, plus the time stages reported
    // it waiting for their turn (the denoise group). Meaningful when `started`.
    double queue_seconds = 0;
    // Whether RequestAccepted / FirstStageStarted were called for it.
    bool accepted = false;
    bool started = false;
  };
  virtual void RequestFinished(const Outcome& outcome) = 0;
};

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_ORCHESTRATOR_REQUEST_OBSERVER_H_
