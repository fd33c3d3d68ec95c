#include "services/http/job_store.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace diffmesh::http {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

VideoJob Job(const std::string& prompt) {
  VideoJob j;
  j.model = "m";
  j.prompt = prompt;
  return j;
}

TEST(JobStore, FullStoreRefusesUntilJobsExpire) {
  JobStore store(2, absl::Minutes(10));
  auto a = store.Create(Job("a"), kT0);
  auto b = store.Create(Job("b"), kT0);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_THAT(*a, ::testing::StartsWith("video_"));
  // Full: running jobs are never dropped.
  EXPECT_EQ(store.Create(Job("c"), kT0 + absl::Hours(5)).status().code(),
            absl::StatusCode::kResourceExhausted);
  // A finished job is held for the retention time, then its slot frees.
  ASSERT_TRUE(store.Update(*a, [](VideoJob& j) {
    j.status = VideoJob::Status::kCompleted;
    j.completed_at = kT0 + absl::Minutes(1);
  }));
  EXPECT_EQ(store.Create(Job("c"), kT0 + absl::Minutes(10)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store.Get(*a, kT0 + absl::Minutes(10)).has_value());
  EXPECT_FALSE(store.Get(*a, kT0 + absl::Minutes(11)).has_value());
  EXPECT_TRUE(store.Create(Job("c"), kT0 + absl::Minutes(11)).ok());
  EXPECT_EQ(store.Size(kT0 + absl::Minutes(11)), 2u);
  EXPECT_EQ(store.Running(), 2u);
}

TEST(JobStore, RemoveReturnsTheCancel) {
  JobStore store(1, absl::Minutes(1));
  bool cancelled = false;
  VideoJob j = Job("a");
  j.cancel = [&] { cancelled = true; };
  auto id = store.Create(std::move(j), kT0);
  ASSERT_TRUE(id.ok());
  auto removed = store.Remove(*id);
  ASSERT_TRUE(removed.has_value());
  removed->cancel();
  EXPECT_TRUE(cancelled);
  EXPECT_FALSE(store.Remove(*id).has_value());
  EXPECT_FALSE(store.Update(*id, [](VideoJob&) {}));
  EXPECT_TRUE(store.Create(Job("b"), kT0).ok());
}

TEST(VideoJobJson, OpenAiShape) {
  VideoJob j = Job("a fox");
  j.id = "video_1";
  j.size = "64x64";
  j.seconds = "4";
  j.created_at = kT0;
  j.status = VideoJob::Status::kFailed;
  j.completed_at = kT0 + absl::Seconds(3);
  j.error = absl::InvalidArgumentError("height: too big");
  nlohmann::json out = VideoJobJson(j, absl::Hours(1));
  EXPECT_EQ(out["object"], "video");
  EXPECT_EQ(out["status"], "failed");
  EXPECT_EQ(out["created_at"], 1700000000);
  EXPECT_EQ(out["completed_at"], 1700000003);
  EXPECT_EQ(out["expires_at"], 1700003603);
  EXPECT_EQ(out["seconds"], "4");
  EXPECT_EQ(out["error"]["code"], "invalid_argument");
  EXPECT_EQ(out["error"]["message"], "height: too big");
}

}  // namespace
}  // namespace diffmesh::http
