#include "common/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/metrics/families.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace diffmesh::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// GET http://127.0.0.1:port/path over a plain socket; the whole response, headers included.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req =
        absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
    }
  }
  close(fd);
  return out;
}

TEST(MetricsTest, BucketsAreIncreasingAndSpanMillisecondsToMinutes) {
  for (const auto* b : {&LatencyBuckets(), &StepBuckets(), &TokenBuckets()}) {
    EXPECT_TRUE(std::is_sorted(b->begin(), b->end()));
    EXPECT_EQ(std::adjacent_find(b->begin(), b->end()), b->end());
  }
  EXPECT_LE(LatencyBuckets().front(), 0.001);
  EXPECT_GE(LatencyBuckets().back(), 300);
  EXPECT_LE(StepBuckets().front(), 0.001);
  EXPECT_GE(StepBuckets().back(), 30);
}

TEST(MetricsTest, HistogramObservationShowsUpWithLabelsAndBuckets) {
  prometheus::Registry registry;
  RequestFamilies families(registry);
  auto& h = families.stage_duration.Add({{"model", "glm-image-tiny"}, {"stage", "denoise"}},
                                        LatencyBuckets());
  h.Observe(0.003);  // in (0.0025, 0.005]
  h.Observe(12.0);   // in (10, 15]
  families.requests.Add({{"model", "glm-image-tiny"}, {"code", CodeLabel(absl::StatusCode::kOk)}})
      .Increment();
  const std::string text = TextExposition({&registry});

  EXPECT_THAT(text, HasSubstr("# TYPE diffmesh_stage_duration_seconds histogram"));
  const std::string labels = R"(model="glm-image-tiny",stage="denoise")";
  EXPECT_THAT(text,
              HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_count{", labels, "} 2")));
  EXPECT_THAT(text,
              HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_sum{", labels, "} 12.003")));
  // Cumulative buckets: none at or below 2.5 ms, one up to 10 s, both from 15 s on.
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_bucket{", labels,
                                           ",le=\"0.0025\"} 0")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_bucket{", labels,
                                           ",le=\"0.005\"} 1")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_bucket{", labels,
                                           ",le=\"10\"} 1")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_bucket{", labels,
                                           ",le=\"15\"} 2")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_bucket{", labels,
                                           ",le=\"+Inf\"} 2")));
  EXPECT_THAT(text, HasSubstr(R"(diffmesh_requests_total{code="OK",model="glm-image-tiny"} 1)"));
  // Families without a labelled child are left out of the exposition.
  EXPECT_THAT(text, Not(HasSubstr("diffmesh_queue_duration_seconds_count")));
}

TEST(MetricsTest, CallbackGaugeIsReadAtCollection) {
  int used = 3;
  CallbackGauge gauge(kArKvCacheSlots, kArKvCacheSlotsHelp, [&] {
    return std::vector<CallbackGauge::Sample>{{{{"state", "used"}}, static_cast<double>(used)},
                                              {{{"state", "free"}}, 8.0 - used}};
  });
  EXPECT_THAT(TextExposition({&gauge}), HasSubstr(R"(diffmesh_ar_kv_cache_slots{state="used"} 3)"));
  used = 5;
  const std::string text = TextExposition({&gauge});
  EXPECT_THAT(text, HasSubstr("# TYPE diffmesh_ar_kv_cache_slots gauge"));
  EXPECT_THAT(text, HasSubstr(R"(diffmesh_ar_kv_cache_slots{state="used"} 5)"));
  EXPECT_THAT(text, HasSubstr(R"(diffmesh_ar_kv_cache_slots{state="free"} 3)"));
  CallbackGauge empty("diffmesh_test_empty", "none",
                      [] { return std::vector<CallbackGauge::Sample>(); });
  EXPECT_EQ(TextExposition({&empty}), "");
}

TEST(MetricsTest, StageCallTrackerCountsByCode) {
  prometheus::Registry registry;
  StageServiceFamilies families(registry);
  {
    StageCallTracker ok(&families, "encoder");
    EXPECT_THAT(TextExposition({&registry}),
                HasSubstr(R"(diffmesh_stage_requests_in_flight{stage="encoder"} 1)"));
    ok.Finish(absl::OkStatus());
  }
  { StageCallTracker failed(&families, "encoder"); }  // no Finish: counted as UNKNOWN
  StageCallTracker off(nullptr, "encoder");           // metrics off: a no-op
  off.Finish(absl::OkStatus());
  const std::string text = TextExposition({&registry});
  EXPECT_THAT(text, HasSubstr(R"(diffmesh_stage_requests_in_flight{stage="encoder"} 0)"));
  EXPECT_THAT(text, HasSubstr(R"(diffmesh_stage_requests_total{code="OK",stage="encoder"} 1)"));
  EXPECT_THAT(text,
              HasSubstr(R"(diffmesh_stage_requests_total{code="UNKNOWN",stage="encoder"} 1)"));
}

TEST(MetricsTest, ExposerServesTheRegistryOverHttp) {
  auto exposer = MetricsExposer::Start("127.0.0.1", 0);
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  ASSERT_GT((*exposer)->port(), 0);
  DenoiseFamilies families((*exposer)->registry());
  families.step_duration.Add({{"model", "glm-image-tiny"}}, StepBuckets()).Observe(0.02);
  (*exposer)->Add(std::make_shared<CallbackGauge>(kRequestsWaiting, kRequestsWaitingHelp, [] {
    return std::vector<CallbackGauge::Sample>{{{{"stage", "ar"}}, 2}};
  }));

  const std::string response = HttpGet((*exposer)->port(), "/metrics");
  EXPECT_THAT(response, HasSubstr("200 OK"));
  EXPECT_THAT(
      response,
      HasSubstr(
          R"(diffmesh_denoise_step_duration_seconds_bucket{model="glm-image-tiny",le="0.025"} 1)"));
  EXPECT_THAT(response, HasSubstr(R"(diffmesh_requests_waiting{stage="ar"} 2)"));

  EXPECT_THAT(response, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_EQ((*exposer)->Scrape(), response.substr(response.find("\r\n\r\n") + 4));
  EXPECT_THAT(HttpGet((*exposer)->port(), "/"), HasSubstr("404 Not Found"));

  // The port is taken now: a second exposer on it fails with a status, not an exception.
  auto second = MetricsExposer::Start("127.0.0.1", (*exposer)->port());
  EXPECT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat("127.0.0.1:", (*exposer)->port())));
}

// The value of `series` (name and labels as exposed) in a text exposition; -1 when absent.
double SampleOf(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = -1;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return -1;
}

TEST(MetricsTest, ProcessMemoryGaugesFollowAllocations) {
  std::vector<std::shared_ptr<prometheus::Collectable>> gauges = ProcessMemoryGauges();
  auto scrape = [&] {
    std::vector<const prometheus::Collectable*> c;
    for (const auto& g : gauges) c.push_back(g.get());
    return TextExposition(c);
  };
  const std::string before = scrape();
  const double rss_before = SampleOf(before, "process_resident_memory_bytes");
  const double in_use_before = SampleOf(before, R"(diffmesh_heap_bytes{state="in_use"})");
  ASSERT_GT(rss_before, 0) << before;
  ASSERT_GT(in_use_before, 0) << before;
  EXPECT_GE(SampleOf(before, R"(diffmesh_heap_bytes{state="free"})"), 0) << before;

  // 64 MiB, touched: both the heap's in-use bytes and the resident set follow.
  constexpr size_t kBytes = 64 << 20;
  std::vector<char> block(kBytes, 1);
  const std::string during = scrape();
  EXPECT_GE(SampleOf(during, R"(diffmesh_heap_bytes{state="in_use"})"), in_use_before + kBytes * 0.99);
  EXPECT_GE(SampleOf(during, R"(diffmesh_heap_bytes{state="mmapped"})"), kBytes);
  EXPECT_GE(SampleOf(during, "process_resident_memory_bytes"), rss_before + kBytes * 0.9);
  EXPECT_EQ(block[kBytes - 1], 1);
  std::vector<char>().swap(block);
  EXPECT_LT(SampleOf(scrape(), R"(diffmesh_heap_bytes{state="in_use"})"), in_use_before + kBytes);
}

TEST(MetricsTest, PortZeroMeansOffForTheFlag) {
  auto off = StartMetricsExposer("test", "127.0.0.1", 0);
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(*off, nullptr);
  EXPECT_FALSE(MetricsExposer::Start("127.0.0.1", 70000).ok());
}

}  // namespace
}  // namespace diffmesh::metrics
