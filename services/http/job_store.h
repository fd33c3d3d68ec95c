// The asynchronous video jobs of /v1/videos: a bounded, thread-safe store. A job holds its
// request summary, status, progress and, once done, its output bytes until `retention` after it
// finished; then it is forgotten. The store never holds more than `capacity` jobs: Create
// answers RESOURCE_EXHAUSTED (HTTP 429) when every slot holds a running job or a finished job
// still within its retention. No HTTP library, no gRPC.
#ifndef DIFFMESH_SERVICES_HTTP_JOB_STORE_H_
#define DIFFMESH_SERVICES_HTTP_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace diffmesh::http {

struct VideoJob {
  enum class Status { kQueued, kInProgress, kCompleted, kFailed };
  std::string id;
  std::string model;
  std::string prompt;
  std::string size;     // "WxH" as requested or as run
  std::string seconds;  // clip length as OpenAI reports it (a string)
  Status status = Status::kQueued;
  int progress = 0;  // 0..100
  absl::Time created_at;
  std::optional<absl::Time> completed_at;
  absl::Status error;   // kFailed: why
  std::string content;  // kCompleted: the output's bytes
  std::string mime_type;
  // Cancels the running generation (the SDK's CancelHandle::Cancel); reset when it ends.
  std::function<void()> cancel;
};

// OpenAI's video object for `job`; expires_at is completed_at + retention.
nlohmann::json VideoJobJson(const VideoJob& job, absl::Duration retention);
std::string VideoStatusName(VideoJob::Status status);

class JobStore {
 public:
  JobStore(size_t capacity, absl::Duration retention);

  // A new queued job with a fresh id ("video_" + 24 hex digits), after dropping expired ones.
  // RESOURCE_EXHAUSTED when the store is full.
  absl::StatusOr<std::string> Create(VideoJob job, absl::Time now);

  // Runs `fn` on the job under the store's lock (`fn` must be quick). False: no such job.
  bool Update(const std::string& id, const std::function<void(VideoJob&)>& fn);
  // A copy of the job; nullopt when unknown or expired.
  std::optional<VideoJob> Get(const std::string& id, absl::Time now);
  // Removes a job and returns it (its cancel callback included); nullopt when unknown.
  std::optional<VideoJob> Remove(const std::string& id);

  // Jobs held now (expired ones dropped first) and by status, for /metrics.
  size_t Size(absl::Time now);
  size_t Running();
  size_t capacity() const { return capacity_; }
  absl::Duration retention() const { return retention_; }

 private:
  void DropExpiredLocked(absl::Time now);

  const size_t capacity_;
  const absl::Duration retention_;
  std::mutex mu_;
  std::map<std::string, VideoJob> jobs_;
  uint64_t counter_ = 0;
};

}  // namespace diffmesh::http

#endif  // DIFFMESH_SERVICES_HTTP_JOB_STORE_H_
