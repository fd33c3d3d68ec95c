// Prometheus metrics for diffmesh services: one registry per process, served over HTTP at
// /metrics, plus gauges read at scrape time from state that another component owns. LibTorch-
// and gRPC-free. The metric families themselves are declared in families.h.
#ifndef DIFFMESH_COMMON_METRICS_METRICS_H_
#define DIFFMESH_COMMON_METRICS_METRICS_H_

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"
#include "prometheus/histogram.h"
#include "prometheus/labels.h"
#include "prometheus/registry.h"

namespace diffmesh::metrics {

// Histogram bucket upper bounds, in seconds. Each set spans both a tiny model on a CPU
// (milliseconds) and a 50-step 1024² run on a GPU (tens of seconds end to end): 1-2.5-5 per
// decade at the small end, and closer bounds where the GPU values fall, so histogram_quantile
// interpolates within a narrow bucket there.
//
// Request, stage, queue and first-event times: 1 ms .. 10 min.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets();
// One denoising step: 0.5 ms .. 1 min.
const prometheus::Histogram::BucketBoundaries& StepBuckets();
// Time per AR token: 50 µs .. 2.5 s.
const prometheus::Histogram::BucketBoundaries& TokenBuckets();

// Gauges whose values are read when Prometheus scrapes, from a callback, instead of being kept
// up to date by the code that owns the state (e.g. the AR cache's free slots).
class CallbackGauge final : public prometheus::Collectable {
 public:
  struct Sample {
    prometheus::Labels labels;
    double value = 0;
  };
  // `read` is called from the exposer's HTTP threads: it must be thread-safe. An empty result
  // exposes no samples (the family is left out).
  using Read = std::function<std::vector<Sample>()>;
  CallbackGauge(std::string name, std::string help, Read read);

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::string name_;
  const std::string help_;
  const Read read_;
};

// The process's memory, read at each scrape (Linux, glibc):
//   process_resident_memory_bytes         resident set size (/proc/self/statm)
//   diffmesh_heap_bytes{state="in_use"}   bytes malloc has handed out and not had back
//   diffmesh_heap_bytes{state="free"}     bytes malloc holds free in its arenas (not returned to
//                                         the system: fragmentation shows here, a leak in in_use)
//   diffmesh_heap_bytes{state="mmapped"}  of in_use, the large blocks malloc mmapped on their own
// StartMetricsExposer adds them to every service's endpoint.
std::vector<std::shared_ptr<prometheus::Collectable>> ProcessMemoryGauges();

// A process's metrics registry and its HTTP endpoint: GET /metrics answers with the text
// exposition of the registry and the added collectables; other paths get 404.
//
// The endpoint is a small HTTP/1.1 server of its own (one thread, one connection at a time,
// each closed after its response, 5 s socket timeouts) rather than prometheus-cpp's exposer:
// Debian builds that one's CivetWeb with 100 KiB thread stacks, and on a GPU host its threads
// fail to start in a process that has loaded LibTorch with CUDA.
class MetricsExposer {
 public:
  // Serves http://host:port/metrics; port 0 picks a free port (see port()). Fails when the
  // address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsExposer>> Start(const std::string& host, int port);
  // Stops serving (waits for a response being written).
  ~MetricsExposer();

  prometheus::Registry& registry() { return *registry_; }
  // Also scraped at /metrics; kept alive by the exposer. Thread-safe.
  void Add(std::shared_ptr<prometheus::Collectable> collectable);
  // The bound port.
  int port() const { return port_; }

  // The text exposition /metrics serves.
  std::string Scrape() const;

 private:
  MetricsExposer() = default;
  void Serve();
  void Respond(int fd) const;

  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;  // guarded by mu_
  int port_ = 0;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};  // a pipe: writing to [1] stops Serve
  std::thread thread_;
};

// For a service's --metrics-port flag: 0 means off (returns nullptr); otherwise starts the
// exposer, registers diffmesh_build_info{service=name, version} = 1 and prints
// "<name> metrics on http://host:port/metrics".
absl::StatusOr<std::unique_ptr<MetricsExposer>> StartMetricsExposer(const char* name,
                                                                    const std::string& host,
                                                                    int port);

// The Prometheus text exposition of `collectables` (for tests and debugging).
std::string TextExposition(const std::vector<const prometheus::Collectable*>& collectables);

}  // namespace diffmesh::metrics

#endif  // DIFFMESH_COMMON_METRICS_METRICS_H_
