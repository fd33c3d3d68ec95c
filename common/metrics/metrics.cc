#include "common/metrics/metrics.h"

#include <arpa/inet.h>
#include <malloc.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/net/tcp.h"
#include "common/process/heap_trim.h"
#include "prometheus/gauge.h"
#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace diffmesh::metrics {
namespace {

// Request headers beyond this are not read (a scrape's are a few hundred bytes).
constexpr size_t kMaxRequestBytes = 16 << 10;

std::string HttpResponse(const char* status, const std::string& content_type,
                         const std::string& body, bool head) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n",
                      head ? "" : body);
}

}  // namespace

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,   2.5, 5,
      7.5,   10,     15,    20,   30,    45,   60,  90,   120, 180, 300, 600};
  return *b;
}

const prometheus::Histogram::BucketBoundaries& StepBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3,
      0.5,    0.75,  1,      1.5,   2,    3,     5,    10,  30,  60};
  return *b;
}

const prometheus::Histogram::BucketBoundaries& TokenBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015,
      0.02,    0.03,   0.05,    0.075,  0.1,   0.25,   0.5,   1,      2.5};
  return *b;
}

CallbackGauge::CallbackGauge(std::string name, std::string help, Read read)
    : name_(std::move(name)), help_(std::move(help)), read_(std::move(read)) {}

std::vector<prometheus::MetricFamily> CallbackGauge::Collect() const {
  std::vector<Sample> samples = read_();
  if (samples.empty()) return {};
  prometheus::MetricFamily family;
  family.name = name_;
  family.help = help_;
  family.type = prometheus::MetricType::Gauge;
  for (const Sample& s : samples) {
    prometheus::ClientMetric m;
    for (const auto& [name, value] : s.labels) m.label.push_back({name, value});
    m.gauge.value = s.value;
    family.metric.push_back(std::move(m));
  }
  return {std::move(family)};
}

std::vector<std::shared_ptr<prometheus::Collectable>> ProcessMemoryGauges() {
  auto resident = std::make_shared<CallbackGauge>(
      "process_resident_memory_bytes", "Resident memory size in bytes.",
      []() -> std::vector<CallbackGauge::Sample> {
        const std::optional<int64_t> bytes = ResidentBytes();
        if (!bytes) return {};
        return {{{}, static_cast<double>(*bytes)}};
      });
  auto heap = std::make_shared<CallbackGauge>(
      "diffmesh_heap_bytes",
      "malloc's heap: in_use = handed out and not freed (mmapped included), free = held in its "
      "arenas but not returned to the system, mmapped = large blocks mapped on their own.",
      [] {
        const struct mallinfo2 m = mallinfo2();
        return std::vector<CallbackGauge::Sample>{
            {{{"state", "in_use"}}, static_cast<double>(m.uordblks + m.hblkhd)},
            {{{"state", "free"}}, static_cast<double>(m.fordblks)},
            {{{"state", "mmapped"}}, static_cast<double>(m.hblkhd)}};
      });
  return {resident, heap};
}

absl::StatusOr<std::unique_ptr<MetricsExposer>> MetricsExposer::Start(const std::string& host,
                                                                      int port) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics port ", port, " is not a TCP port"));
  }
  const std::string where = absl::StrCat(host, ":", port);
  absl::StatusOr<int> listening = net::ListenTcp(host, port, /*backlog=*/16);
  if (!listening.ok()) {
    return absl::Status(listening.status().code(), absl::StrCat("cannot serve metrics on ", where,
                                                                ": ", listening.status().message()));
  }
  std::unique_ptr<MetricsExposer> e(new MetricsExposer());
  e->listen_fd_ = *listening;
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(e->listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
  e->port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                               : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  if (pipe2(e->wake_fds_, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("metrics endpoint: pipe: ", std::strerror(errno)));
  }
  e->thread_ = std::thread([raw = e.get()] { raw->Serve(); });
  return e;
}

MetricsExposer::~MetricsExposer() {
  if (thread_.joinable()) {
    const char stop = 1;
    while (write(wake_fds_[1], &stop, 1) < 0 && errno == EINTR) {
    }
    thread_.join();
  }
  for (int fd : {listen_fd_, wake_fds_[0], wake_fds_[1]}) {
    if (fd >= 0) close(fd);
  }
}

void MetricsExposer::Add(std::shared_ptr<prometheus::Collectable> collectable) {
  std::lock_guard<std::mutex> lock(mu_);
  collectables_.push_back(std::move(collectable));
}

std::string MetricsExposer::Scrape() const {
  std::vector<const prometheus::Collectable*> all = {registry_.get()};
  std::lock_guard<std::mutex> lock(mu_);  // held while collecting: Add may not reallocate
  for (const auto& c : collectables_) all.push_back(c.get());
  return TextExposition(all);
}

void MetricsExposer::Serve() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fds_[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      std::cerr << "metrics endpoint: poll: " << std::strerror(errno) << std::endl;
      return;
    }
    if (fds[1].revents != 0) return;  // stopping
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;  // e.g. the client gave up already
    // A stalled client cannot hold the endpoint for long.
    timeval timeout{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    Respond(fd);
    close(fd);
  }
}

void MetricsExposer::Respond(int fd) const {
  std::string request;
  char buf[2048];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < kMaxRequestBytes) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    request.append(buf, static_cast<size_t>(n));
  }
  // Request line: METHOD SP target SP version.
  const std::vector<absl::string_view> line =
      absl::StrSplit(absl::string_view(request).substr(0, request.find("\r\n")), ' ');
  if (line.size() != 3 || !absl::StartsWith(line[2], "HTTP/1.")) {
    net::SendAll(fd, HttpResponse("400 Bad Request", "text/plain", "bad request\n", false));
    return;
  }
  const bool head = line[0] == "HEAD";
  if (line[0] != "GET" && !head) {
    net::SendAll(fd, HttpResponse("405 Method Not Allowed", "text/plain", "GET /metrics\n", head));
    return;
  }
  const absl::string_view path = line[1].substr(0, line[1].find('?'));
  if (path != "/metrics") {
    net::SendAll(fd, HttpResponse("404 Not Found", "text/plain", "see /metrics\n", head));
    return;
  }
  net::SendAll(fd,
               HttpResponse("200 OK", "text/plain; version=0.0.4; charset=utf-8", Scrape(), head));
}

absl::StatusOr<std::unique_ptr<MetricsExposer>> StartMetricsExposer(const char* name,
                                                                    const std::string& host,
                                                                    int port) {
  if (port == 0) return std::unique_ptr<MetricsExposer>();
  auto exposer = MetricsExposer::Start(host, port);
  if (!exposer.ok()) return exposer.status();
  prometheus::BuildGauge()
      .Name("diffmesh_build_info")
      .Help("Always 1; labels name the service and the diffmesh version it runs.")
      .Register((*exposer)->registry())
      .Add({{"service", name}, {"version", DIFFMESH_VERSION}})
      .Set(1);
  for (auto& gauge : ProcessMemoryGauges()) (*exposer)->Add(std::move(gauge));
  std::cout << name << " metrics on http://" << host << ":" << (*exposer)->port() << "/metrics"
            << std::endl;
  return exposer;
}

std::string TextExposition(const std::vector<const prometheus::Collectable*>& collectables) {
  std::vector<prometheus::MetricFamily> families;
  for (const prometheus::Collectable* c : collectables) {
    for (auto& f : c->Collect()) families.push_back(std::move(f));
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace diffmesh::metrics
