#include "services/http/job_store.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace diffmesh::http {

std::string VideoStatusName(VideoJob::Status status) {
  switch (status) {
    case VideoJob::Status::kQueued:
      return "queued";
    case VideoJob::Status::kInProgress:
      return "in_progress";
    case VideoJob::Status::kCompleted:
      return "completed";
    case VideoJob::Status::kFailed:
      return "failed";
  }
  return "failed";
}

nlohmann::json VideoJobJson(const VideoJob& job, absl::Duration retention) {
  using nlohmann::json;
  json out = {
      {"id", job.id},
      {"object", "video"},
      {"model", job.model},
      {"status", VideoStatusName(job.status)},
      {"progress", job.progress},
      {"created_at", absl::ToUnixSeconds(job.created_at)},
      {"completed_at", nullptr},
      {"expires_at", nullptr},
      {"prompt", job.prompt},
      {"size", job.size},
      {"seconds", job.seconds},
      {"remixed_from_video_id", nullptr},
      {"error", nullptr},
  };
  if (job.completed_at) {
    out["completed_at"] = absl::ToUnixSeconds(*job.completed_at);
    out["expires_at"] = absl::ToUnixSeconds(*job.completed_at + retention);
  }
  if (job.status == VideoJob::Status::kFailed) {
    std::string code = absl::StatusCodeToString(job.error.code());
    for (char& c : code) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out["error"] = {{"code", code}, {"message", std::string(job.error.message())}};
  }
  if (!job.mime_type.empty()) out["diffmesh"] = {{"mime_type", job.mime_type}};
  return out;
}

JobStore::JobStore(size_t capacity, absl::Duration retention)
    : capacity_(capacity), retention_(retention) {}

void JobStore::DropExpiredLocked(absl::Time now) {
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    if (it->second.completed_at && *it->second.completed_at + retention_ <= now) {
      it = jobs_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::StatusOr<std::string> JobStore::Create(VideoJob job, absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  DropExpiredLocked(now);
  if (jobs_.size() >= capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the video job store is full (", capacity_, " jobs, running or finished within the last ",
        absl::FormatDuration(retention_), "); retry later or DELETE finished jobs"));
  }
  // Unguessable ids: a job's content is readable by whoever knows its id.
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  job.id = absl::StrFormat("video_%016x%08x", rng(), static_cast<uint32_t>(++counter_));
  job.created_at = now;
  std::string id = job.id;
  jobs_.emplace(id, std::move(job));
  return id;
}

bool JobStore::Update(const std::string& id, const std::function<void(VideoJob&)>& fn) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return false;
  fn(it->second);
  return true;
}

std::optional<VideoJob> JobStore::Get(const std::string& id, absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  DropExpiredLocked(now);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  return it->second;
}

std::optional<VideoJob> JobStore::Remove(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  VideoJob job = std::move(it->second);
  jobs_.erase(it);
  return job;
}

size_t JobStore::Size(absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  DropExpiredLocked(now);
  return jobs_.size();
}

size_t JobStore::Running() {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& [id, job] : jobs_) n += !job.completed_at.has_value();
  return n;
}

}  // namespace diffmesh::http
