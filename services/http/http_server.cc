#include "services/http/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <queue>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"
#include "services/http/job_store.h"
#include "services/http/openai_api.h"
#include "common/rpc/token_authenticator.h"

namespace diffmesh::http {
namespace {

using nlohmann::json;

constexpr char kGenerationService[] = "diffmesh.v1.GenerationService";

int64_t UnixNow() { return absl::ToUnixSeconds(absl::Now()); }

void SendError(httplib::Response& res, const ApiError& e) {
  res.status = e.http_status;
  res.set_content(ErrorJson(e).dump(), "application/json");
}
void SendStatus(httplib::Response& res, const absl::Status& s) {
  SendError(res, ErrorFromStatus(s));
}
void SendJson(httplib::Response& res, const json& body) {
  res.status = 200;
  res.set_content(body.dump(), "application/json");
}

// --- Client disconnects -------------------------------------------------------------------
// cpp-httplib 0.11 does not tell a handler that its client went away. The handler's connection
// is the socket whose local and peer addresses are the request's; it is found once per
// connection (cached per worker thread, which serves one connection at a time) and polled for
// POLLRDHUP while the generation runs.
std::string NumericHost(const sockaddr_storage& addr, socklen_t len) {
  char host[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof(host), nullptr, 0,
                  NI_NUMERICHOST) != 0) {
    return "";
  }
  return host;
}

int PortOf(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  }
  return -1;
}

bool SocketMatches(int fd, const httplib::Request& req) {
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) return false;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) return false;
  return PortOf(local) == req.local_port && PortOf(peer) == req.remote_port &&
         NumericHost(peer, peer_len) == req.remote_addr;
}

int ConnectionSocket(const httplib::Request& req) {
  thread_local int cached = -1;
  if (cached >= 0 && SocketMatches(cached, req)) return cached;
  cached = -1;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  while (dirent* e = readdir(dir)) {
    const int fd = atoi(e->d_name);
    if (fd <= 2 || fd == dirfd(dir)) continue;
    if (SocketMatches(fd, req)) {
      cached = fd;
      break;
    }
  }
  closedir(dir);
  return cached;
}

bool PeerClosed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

// --- Connection limit ---------------------------------------------------------------------
// A fixed pool of workers, one connection each; the accept loop blocks while every worker is
// busy and `max_queued` connections wait, so the kernel's backlog holds the rest.
class BoundedPool : public httplib::TaskQueue {
 public:
  BoundedPool(int workers, size_t max_queued) : max_queued_(max_queued) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { Work(); });
  }
  ~BoundedPool() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return queue_.size() < max_queued_ || shutdown_; });
    queue_.push_back(std::move(fn));
    not_empty_.notify_one();
  }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (shutdown_) return;
      shutdown_ = true;
    }
    not_empty_.notify_all();
    not_full_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        not_empty_.wait(lock, [&] { return !queue_.empty() || shutdown_; });
        if (queue_.empty()) return;  // shut down with nothing left
        fn = std::move(queue_.front());
        queue_.pop_front();
        not_full_.notify_one();
      }
      fn();
    }
  }

  const size_t max_queued_;
  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<std::function<void()>> queue_;
  bool shutdown_ = false;
  std::vector<std::thread> threads_;
};

// --- Progress ----------------------------------------------------------------------------
// Overall progress of a run from its stages' Progress and StageEvents: each of the model's
// stages weighs the same; a finished stage counts whole.
class ProgressTracker {
 public:
  explicit ProgressTracker(int stages) : stages_(stages) {}
  // The overall percentage (0..99) after `event`; -1 when the event says nothing of progress.
  int Add(const v1::GenerateEvent& event) {
    if (event.has_progress() && event.progress().total() > 0) {
      double& f = fraction_[event.progress().stage()];
      f = std::max(f, std::min(1.0, static_cast<double>(event.progress().done()) /
                                        static_cast<double>(event.progress().total())));
    } else if (event.has_stage() && event.stage().kind() == v1::StageEvent::KIND_FINISHED) {
      fraction_[event.stage().stage()] = 1.0;
    } else {
      return -1;
    }
    return Current();
  }
  int Current() const {
    double sum = 0;
    for (const auto& [stage, f] : fraction_) sum += f;
    const int n = std::max<int>(stages_, static_cast<int>(fraction_.size()));
    return std::min(99, static_cast<int>(100.0 * sum / std::max(1, n)));
  }

 private:
  const int stages_;
  std::map<std::string, double> fraction_;
};

// n Generate calls of one HTTP request, running at once: their events and results, for the
// handler thread that waits on them.
struct Batch {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<int, v1::GenerateEvent>> events;  // progress / stage, when streaming
  std::vector<std::optional<absl::StatusOr<v1::GenerateResult>>> results;
  int remaining = 0;
  std::vector<std::unique_ptr<sdk::CancelHandle>> cancels;
  void CancelAll() {
    for (auto& c : cancels) c->Cancel();
  }
};

}  // namespace

class HttpFrontDoor::Impl {
 public:
  Impl(HttpOptions options, sdk::Client* client)
      : options_(std::move(options)),
        client_(client),
        jobs_(options_.max_video_jobs, options_.video_retention),
        registry_(std::make_shared<prometheus::Registry>()),
        requests_(prometheus::BuildCounter()
                      .Name("diffmesh_http_requests_total")
                      .Help("HTTP requests answered by the front door, by route and status code")
                      .Register(*registry_)),
        latency_(prometheus::BuildHistogram()
                     .Name("diffmesh_http_request_seconds")
                     .Help("Time from a request's headers to its response, by route")
                     .Register(*registry_)),
        jobs_gauge_(prometheus::BuildGauge()
                        .Name("diffmesh_http_video_jobs")
                        .Help("Video jobs held by the front door's store, by state")
                        .Register(*registry_)),
        in_flight_gauge_(prometheus::BuildGauge()
                             .Name("diffmesh_http_generations_in_flight")
                             .Help("Generate calls the front door has running")
                             .Register(*registry_)
                             .Add({})) {
    if (!options_.tokens.empty()) {
      auth_ = std::make_unique<TokenAuthenticator>(options_.tokens);
    }
  }

  ~Impl() { Stop(); }

  absl::Status Start() {
    if (!options_.tls_cert_file.empty()) {
      auto ssl = std::make_unique<httplib::SSLServer>(
          options_.tls_cert_file.c_str(), options_.tls_key_file.c_str(),
          options_.tls_client_ca_file.empty() ? nullptr : options_.tls_client_ca_file.c_str());
      if (!ssl->is_valid()) {
        return absl::InvalidArgumentError(
            absl::StrCat("TLS: cannot use certificate '", options_.tls_cert_file, "' with key '",
                         options_.tls_key_file, "'",
                         options_.tls_client_ca_file.empty()
                             ? ""
                             : absl::StrCat(" and client CA '", options_.tls_client_ca_file, "'")));
      }
      server_ = std::move(ssl);
    } else {
      server_ = std::make_unique<httplib::Server>();
    }
    Configure(*server_);
    if (options_.port == 0) {
      port_ = server_->bind_to_any_port(options_.host);
      if (port_ <= 0) return absl::UnavailableError(absl::StrCat("cannot bind ", options_.host));
    } else {
      if (!server_->bind_to_port(options_.host, options_.port)) {
        return absl::UnavailableError(
            absl::StrCat("cannot bind ", options_.host, ":", options_.port, " (in use?)"));
      }
      port_ = options_.port;
    }
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    return absl::OkStatus();
  }

  int port() const { return port_; }

  void Stop() {
    if (server_ == nullptr) return;
    server_->stop();
    // Running generations end with CANCELLED (their handlers answer and the workers free up);
    // then every on_done has run before the Client may go.
    std::vector<std::function<void()>> cancels;
    {
      std::lock_guard<std::mutex> lock(cancel_mu_);
      for (auto& [id, c] : job_cancels_) cancels.push_back(c);
      for (const auto& batch : batches_) cancels.push_back([batch] { batch->CancelAll(); });
      stopping_ = true;
    }
    for (auto& c : cancels) c();
    if (thread_.joinable()) thread_.join();
    std::unique_lock<std::mutex> lock(in_flight_mu_);
    in_flight_cv_.wait(lock, [&] { return in_flight_ == 0; });
    server_.reset();
  }

 private:
  // --- Server setup -----------------------------------------------------------------------
  void Configure(httplib::Server& s) {
    const int workers = std::max(1, options_.max_connections);
    s.new_task_queue = [workers] { return new BoundedPool(workers, workers); };
    s.set_payload_max_length(options_.max_body_bytes);
    // A response goes out as two writes (headers, body): with Nagle on, the body waits for the
    // client's delayed ACK of the headers (40 ms on Linux). Accepted sockets inherit it.
    s.set_tcp_nodelay(true);
    const auto io = absl::ToChronoMicroseconds(options_.io_timeout);
    s.set_read_timeout(io);
    s.set_write_timeout(io);
    s.set_keep_alive_timeout(
        std::max<time_t>(1, absl::ToInt64Seconds(options_.keep_alive_timeout)));
    s.set_pre_routing_handler(
        [this](const httplib::Request& req, httplib::Response& res) { return PreRoute(req, res); });
    s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      std::string message;
      switch (res.status) {
        case 400:
          message = "malformed HTTP request (or a request or header line over 8 KiB)";
          break;
        case 404:
          message = absl::StrCat("no route ", req.method, " ", req.path);
          break;
        case 413:
          message = "the request body is larger than the server's limit (--max-body-bytes)";
          break;
        case 431:
          message = "the request's headers are larger than the server's limit";
          break;
        default:
          message = absl::StrCat("HTTP ", res.status);
      }
      SendError(res, ErrorForHttpStatus(res.status, message));
    });
    s.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "internal error";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          SendError(res, ErrorForHttpStatus(500, what));
        });
    s.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      const std::string route = RouteOf(req);
      requests_.Add({{"route", route}, {"code", std::to_string(res.status)}}).Increment();
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - RequestStart()).count();
      latency_.Add({{"route", route}}, LatencyBuckets()).Observe(seconds);
    });

    s.Get("/", [this](const httplib::Request&, httplib::Response& res) { Playground(res); });
    s.Get("/playground",
          [this](const httplib::Request&, httplib::Response& res) { Playground(res); });
    s.Get("/health", [this](const httplib::Request&, httplib::Response& res) { Health(res); });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) { Metrics(res); });
    s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { Models(res); });
    s.Post("/v1/images/generations", [this](const httplib::Request& req, httplib::Response& res) {
      ImagesGenerations(req, res);
    });
    s.Post("/v1/images/edits",
           [this](const httplib::Request& req, httplib::Response& res) { ImagesEdits(req, res); });
    s.Post("/v1/videos",
           [this](const httplib::Request& req, httplib::Response& res) { CreateVideo(req, res); });
    s.Get(R"(/v1/videos/([A-Za-z0-9_]+))",
          [this](const httplib::Request& req, httplib::Response& res) { GetVideo(req, res); });
    s.Get(R"(/v1/videos/([A-Za-z0-9_]+)/content)",
          [this](const httplib::Request& req, httplib::Response& res) { VideoContent(req, res); });
    s.Delete(
        R"(/v1/videos/([A-Za-z0-9_]+))",
        [this](const httplib::Request& req, httplib::Response& res) { DeleteVideo(req, res); });
  }

  static std::chrono::steady_clock::time_point& RequestStart() {
    thread_local std::chrono::steady_clock::time_point start;
    return start;
  }

  static const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
    static const prometheus::Histogram::BucketBoundaries b = {
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1,      2.5,   5,      10,    30,   60,    120,  300, 600};
    return b;
  }

  // A fixed label per route (ids left out), so /metrics stays small.
  static std::string RouteOf(const httplib::Request& req) {
    const std::string& p = req.path;
    if (absl::StartsWith(p, "/v1/videos/")) {
      return absl::StrCat(req.method, " /v1/videos/{id}",
                          absl::EndsWith(p, "/content") ? "/content" : "");
    }
    for (const char* known : {"/v1/images/generations", "/v1/images/edits", "/v1/videos",
                              "/v1/models", "/health", "/metrics", "/", "/playground"}) {
      if (p == known) return absl::StrCat(req.method, " ", p);
    }
    return "other";
  }

  httplib::Server::HandlerResponse PreRoute(const httplib::Request& req, httplib::Response& res) {
    RequestStart() = std::chrono::steady_clock::now();
    size_t header_bytes = req.target.size();
    for (const auto& [k, v] : req.headers) header_bytes += k.size() + v.size() + 4;
    if (header_bytes > options_.max_header_bytes) {
      SendError(res, ErrorForHttpStatus(431, absl::StrCat("the request's headers (", header_bytes,
                                                          " bytes) exceed the limit of ",
                                                          options_.max_header_bytes)));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (auth_ != nullptr && absl::StartsWith(req.path, "/v1/")) {
      std::vector<absl::string_view> values;
      const size_t n = req.get_header_value_count("Authorization");
      std::vector<std::string> held;
      held.reserve(n);
      for (size_t i = 0; i < n; ++i) held.push_back(req.get_header_value("Authorization", i));
      for (const std::string& v : held) values.push_back(v);
      if (absl::Status s = auth_->Check(values); !s.ok()) {
        SendStatus(res, s);
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  }

  // --- Small routes -----------------------------------------------------------------------
  void Playground(httplib::Response& res) {
    res.set_content(options_.playground_html, "text/html; charset=utf-8");
  }

  void Health(httplib::Response& res) {
    absl::Status s = client_->WaitUntilServing(absl::Seconds(1), kGenerationService);
    if (s.ok()) {
      SendJson(res, {{"status", "SERVING"}});
    } else {
      res.status = 503;
      res.set_content(json{{"status", "NOT_SERVING"}, {"detail", std::string(s.message())}}.dump(),
                      "application/json");
    }
  }

  void Metrics(httplib::Response& res) {
    const absl::Time now = absl::Now();
    const double held = static_cast<double>(jobs_.Size(now));
    const double running = static_cast<double>(jobs_.Running());
    jobs_gauge_.Add({{"state", "running"}}).Set(running);
    jobs_gauge_.Add({{"state", "finished"}}).Set(held - running);
    jobs_gauge_.Add({{"state", "capacity"}}).Set(static_cast<double>(jobs_.capacity()));
    prometheus::TextSerializer serializer;
    res.set_content(serializer.Serialize(registry_->Collect()),
                    "text/plain; version=0.0.4; charset=utf-8");
  }

  // ListModels, cached for a few seconds: video jobs and progress need a model's kind, frame
  // rule and stages.
  absl::StatusOr<v1::ListModelsResponse> ListModels() {
    std::lock_guard<std::mutex> lock(models_mu_);
    if (models_ && absl::Now() - models_time_ < absl::Seconds(10)) return *models_;
    auto models = client_->ListModels(absl::Seconds(5));
    if (!models.ok()) return models.status();
    models_ = *models;
    models_time_ = absl::Now();
    return *models_;
  }

  // The model a request names (or the default); nullptr when unknown (the orchestrator then
  // answers NOT_FOUND naming it).
  std::optional<v1::ModelInfo> FindModel(const std::string& name) {
    auto models = ListModels();
    if (!models.ok()) return std::nullopt;
    const std::string& want = name.empty() ? models->default_model() : name;
    for (const v1::ModelInfo& m : models->models()) {
      if (m.name() == want) return m;
    }
    return std::nullopt;
  }

  int StageCount(const std::string& model) {
    auto m = FindModel(model);
    return m ? m->stages_size() : 0;
  }

  void Models(httplib::Response& res) {
    auto models = ListModels();
    if (!models.ok()) return SendStatus(res, models.status());
    SendJson(res, ModelsJson(*models));
  }

  // --- Generations ------------------------------------------------------------------------
  void BeginCall() {
    std::lock_guard<std::mutex> lock(in_flight_mu_);
    ++in_flight_;
    in_flight_gauge_.Increment();
  }
  void EndCall() {
    std::lock_guard<std::mutex> lock(in_flight_mu_);
    --in_flight_;
    in_flight_gauge_.Decrement();
    in_flight_cv_.notify_all();
  }

  // Starts `n` generations of `request` (seeds seed, seed+1, ... when a seed is given).
  std::shared_ptr<Batch> StartBatch(const v1::GenerateRequest& request, int n, bool stream) {
    auto batch = std::make_shared<Batch>();
    batch->results.resize(n);
    batch->remaining = n;
    for (int i = 0; i < n; ++i) batch->cancels.push_back(std::make_unique<sdk::CancelHandle>());
    {
      std::lock_guard<std::mutex> lock(cancel_mu_);
      if (stopping_) batch->CancelAll();  // each call then ends at once with CANCELLED
      batches_.insert(batch);
    }
    for (int i = 0; i < n; ++i) {
      v1::GenerateRequest r = request;
      if (r.has_seed()) r.set_seed(r.seed() + static_cast<uint64_t>(i));
      sdk::EventCallback on_event;
      if (stream) {
        on_event = [batch, i](const v1::GenerateEvent& e) {
          if (!e.has_progress() && !e.has_stage() && !e.has_accepted()) return;
          std::lock_guard<std::mutex> lock(batch->mu);
          batch->events.emplace_back(i, e);
          batch->cv.notify_all();
        };
      }
      BeginCall();
      client_->GenerateAsync(
          r, std::move(on_event),
          [this, batch, i](absl::StatusOr<v1::GenerateResult> result) {
            bool last;
            {
              std::lock_guard<std::mutex> lock(batch->mu);
              batch->results[i] = std::move(result);
              last = --batch->remaining == 0;
              batch->cv.notify_all();
            }
            if (last) {
              std::lock_guard<std::mutex> lock(cancel_mu_);
              batches_.erase(batch);
            }
            EndCall();
          },
          batch->cancels[i].get(), options_.request_timeout);
    }
    return batch;
  }

  // Waits for every call of `batch`, cancelling them if the client disconnects. False: the
  // client went away (nothing to answer).
  bool WaitForBatch(const httplib::Request& req, Batch& batch) {
    const int fd = ConnectionSocket(req);
    std::unique_lock<std::mutex> lock(batch.mu);
    bool gone = false;
    while (batch.remaining > 0) {
      batch.cv.wait_for(lock, std::chrono::milliseconds(100));
      if (!gone && batch.remaining > 0 && PeerClosed(fd)) {
        gone = true;
        batch.CancelAll();
      }
    }
    return !gone;
  }

  // The first error of a batch, else its results.
  static absl::StatusOr<std::vector<v1::GenerateResult>> Collect(Batch& batch) {
    std::vector<v1::GenerateResult> out;
    for (auto& r : batch.results) {
      if (!r->ok()) return r->status();
      out.push_back(**r);
    }
    return out;
  }

  void RunImages(const httplib::Request& req, httplib::Response& res,
                 const v1::GenerateRequest& request, const ImageOptions& options,
                 const std::string& error_param_for_inputs) {
    if (options.stream) return StreamImages(req, res, request, options);
    auto batch = StartBatch(request, options.n, /*stream=*/false);
    if (!WaitForBatch(req, *batch)) {
      SendStatus(res, absl::CancelledError("the client disconnected"));
      return;
    }
    auto results = Collect(*batch);
    if (!results.ok()) {
      ApiError e = ErrorFromStatus(results.status());
      if (!error_param_for_inputs.empty() && absl::StartsWith(e.param, "inputs")) {
        e.message = absl::StrCat(error_param_for_inputs, ": ", e.message);
        e.param = error_param_for_inputs;
      }
      return SendError(res, e);
    }
    SendJson(res, ImagesResponseJson(*results, UnixNow()));
  }

  // stream: true — server-sent events: image_generation.progress / image_generation.stage while
  // it runs, image_generation.completed per image, or one "error" event.
  void StreamImages(const httplib::Request& req, httplib::Response& res,
                    const v1::GenerateRequest& request, const ImageOptions& options) {
    auto batch = StartBatch(request, options.n, /*stream=*/true);
    const int fd = ConnectionSocket(req);
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, batch, fd, n = options.n, model = request.model(),
         trackers = std::vector<ProgressTracker>()](size_t, httplib::DataSink& sink) mutable {
          auto send = [&](const std::string& event, const json& data) {
            const std::string text =
                absl::StrCat("event: ", event, "\ndata: ", data.dump(), "\n\n");
            return sink.write(text.data(), text.size());
          };
          const int stages = StageCount(model);
          for (int i = 0; i < n; ++i) trackers.emplace_back(stages);
          std::unique_lock<std::mutex> lock(batch->mu);
          bool gone = false;
          while (!gone) {
            while (!batch->events.empty()) {
              auto [i, e] = std::move(batch->events.front());
              batch->events.pop_front();
              lock.unlock();
              bool ok = true;
              if (e.has_accepted()) {
                ok = send("image_generation.accepted", {{"type", "image_generation.accepted"},
                                                        {"index", i},
                                                        {"request_id", e.accepted().request_id()},
                                                        {"model", e.accepted().request().model()},
                                                        {"seed", e.accepted().request().seed()},
                                                        {"width", e.accepted().request().width()},
                                                        {"height", e.accepted().request().height()},
                                                        {"steps", e.accepted().request().steps()}});
              } else {
                int pct = trackers[i].Add(e);
                if (pct < 0) pct = trackers[i].Current();
                if (e.has_stage()) {
                  ok =
                      send("image_generation.stage",
                           {{"type", "image_generation.stage"},
                            {"index", i},
                            {"stage", e.stage().stage()},
                            {"kind", e.stage().kind() == v1::StageEvent::KIND_FINISHED ? "finished"
                                                                                       : "started"},
                            {"seconds", e.stage().duration_seconds()},
                            {"progress", pct}});
                } else {
                  ok = send("image_generation.progress", {{"type", "image_generation.progress"},
                                                          {"index", i},
                                                          {"stage", e.progress().stage()},
                                                          {"unit", e.progress().unit()},
                                                          {"done", e.progress().done()},
                                                          {"total", e.progress().total()},
                                                          {"progress", pct}});
                }
              }
              lock.lock();
              if (!ok) gone = true;
            }
            if (gone || batch->remaining == 0) break;
            batch->cv.wait_for(lock, std::chrono::milliseconds(100));
            if (batch->events.empty() && batch->remaining > 0 && PeerClosed(fd)) gone = true;
          }
          if (gone) {
            batch->CancelAll();
            return false;  // the client went away: close the connection
          }
          lock.unlock();
          auto results = Collect(*batch);
          if (!results.ok()) {
            send("error", {{"type", "error"},
                           {"error", ErrorJson(ErrorFromStatus(results.status()))["error"]}});
          } else {
            for (size_t i = 0; i < results->size(); ++i) {
              json item = ImageDataJson((*results)[i]);
              item["type"] = "image_generation.completed";
              item["index"] = i;
              item["created_at"] = UnixNow();
              if (const v1::Output* o = PrimaryOutput((*results)[i])) {
                item["output_format"] = FormatOfMime(o->info().mime_type());
                item["size"] = absl::StrCat(o->info().width(), "x", o->info().height());
              }
              send("image_generation.completed", item);
            }
          }
          sink.done();
          return true;
        });
  }

  static bool IsJson(const httplib::Request& req) {
    return absl::StartsWith(req.get_header_value("Content-Type"), "application/json");
  }

  static absl::StatusOr<json> JsonBody(const httplib::Request& req) {
    json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded() || !body.is_object()) {
      return FieldError("body", "must be a JSON object");
    }
    return body;
  }

  void ImagesGenerations(const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<json> body =
        req.is_multipart_form_data() ? absl::StatusOr<json>(FormFields(req)) : JsonBody(req);
    if (!body.ok()) return SendStatus(res, body.status());
    v1::GenerateRequest request;
    ImageOptions options;
    if (absl::Status s = ParseImageFields(*body, &request, &options); !s.ok()) {
      return SendStatus(res, s);
    }
    RunImages(req, res, request, options, "");
  }

  // The text fields of a multipart body as JSON (files left out).
  static json FormFields(const httplib::Request& req) {
    std::vector<std::pair<std::string, std::string>> fields;
    for (const auto& [name, part] : req.files) {
      if (part.filename.empty()) fields.emplace_back(name, part.content);
    }
    return FormFieldsToJson(fields);
  }

  void ImagesEdits(const httplib::Request& req, httplib::Response& res) {
    if (!req.is_multipart_form_data()) {
      return SendStatus(res, FieldError("image",
                                        "send multipart/form-data with the image file(s) "
                                        "in 'image' or 'image[]'"));
    }
    v1::GenerateRequest request;
    ImageOptions options;
    if (absl::Status s = ParseImageFields(FormFields(req), &request, &options); !s.ok()) {
      return SendStatus(res, s);
    }
    for (const auto& [name, part] : req.files) {
      if (name == "image" || name == "image[]") {
        if (part.content.empty()) return SendStatus(res, FieldError(name, "is empty"));
        v1::InputMedia* in = request.add_inputs();
        in->set_role(v1::MEDIA_ROLE_EDIT_IMAGE);
        in->set_data(part.content);
      } else if (name == "mask" && !part.content.empty()) {
        return SendStatus(
            res,
            FieldError(
                "mask",
                absl::StrCat(
                    "masks are not supported by ",
                    request.model().empty() ? "the default model" : request.model(),
                    " (no diffmesh model takes an inpainting mask yet); send the image only")));
      }
    }
    if (request.inputs_size() == 0) {
      return SendStatus(res, FieldError("image", "is required (a PNG, JPEG or WebP file)"));
    }
    RunImages(req, res, request, options, "image");
  }

  // --- Videos -----------------------------------------------------------------------------
  void CreateVideo(const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<json> body =
        req.is_multipart_form_data() ? absl::StatusOr<json>(FormFields(req)) : JsonBody(req);
    if (!body.ok()) return SendStatus(res, body.status());
    const std::string model_name = body->contains("model") && (*body)["model"].is_string()
                                       ? (*body)["model"].get<std::string>()
                                       : "";
    const std::optional<v1::ModelInfo> model = FindModel(model_name);
    // An unknown model is refused now, as OpenAI does, rather than as a failed job later.
    if (!model) {
      if (auto models = ListModels(); models.ok()) {
        return SendStatus(res,
                          absl::NotFoundError(absl::StrCat(
                              "model: '", model_name.empty() ? models->default_model() : model_name,
                              "' is not served here (see GET /v1/models)")));
      }
    }
    v1::GenerateRequest request;
    if (absl::Status s = ParseVideoFields(*body, model ? &*model : nullptr, &request); !s.ok()) {
      return SendStatus(res, s);
    }
    if (req.has_file("input_reference")) {
      const httplib::MultipartFormData ref = req.get_file_value("input_reference");
      if (!ref.filename.empty() || !ref.content.empty()) {
        if (ref.content.empty()) return SendStatus(res, FieldError("input_reference", "is empty"));
        v1::InputMedia* in = request.add_inputs();
        in->set_role(v1::MEDIA_ROLE_FIRST_FRAME);
        in->set_data(ref.content);
      }
    }
    VideoJob job;
    job.model = model ? model->name() : model_name;
    job.prompt = request.prompt();
    const int w = request.has_width() ? request.width() : model ? model->defaults().width() : 0;
    const int h = request.has_height() ? request.height() : model ? model->defaults().height() : 0;
    job.size = absl::StrCat(w, "x", h);
    const double fps = request.has_frame_rate() ? request.frame_rate()
                       : model                  ? model->defaults().frame_rate()
                                                : 0;
    const int frames = request.has_num_frames() ? request.num_frames()
                       : model                  ? model->defaults().num_frames()
                                                : 0;
    job.seconds = fps > 0 && frames > 0 ? absl::StrFormat("%g", frames / fps) : "0";
    auto cancel = std::make_shared<sdk::CancelHandle>();
    job.cancel = [cancel] { cancel->Cancel(); };
    auto id = jobs_.Create(std::move(job), absl::Now());
    if (!id.ok()) return SendStatus(res, id.status());
    {
      std::lock_guard<std::mutex> lock(cancel_mu_);
      job_cancels_[*id] = [cancel] { cancel->Cancel(); };
      if (stopping_) cancel->Cancel();
    }
    auto tracker = std::make_shared<ProgressTracker>(model ? model->stages_size() : 0);
    BeginCall();
    client_->GenerateAsync(
        request,
        [this, id = *id, tracker](const v1::GenerateEvent& e) {
          if (e.has_accepted()) {
            const v1::GenerateRequest& a = e.accepted().request();
            jobs_.Update(id, [&](VideoJob& j) {
              j.status = VideoJob::Status::kInProgress;
              j.model = a.model();
              j.size = absl::StrCat(a.width(), "x", a.height());
              if (a.has_num_frames() && a.frame_rate() > 0) {
                j.seconds = absl::StrFormat("%g", a.num_frames() / a.frame_rate());
              }
            });
            return;
          }
          const int pct = tracker->Add(e);
          if (pct >= 0) {
            jobs_.Update(id, [&](VideoJob& j) { j.progress = std::max(j.progress, pct); });
          }
        },
        [this, id = *id, cancel](absl::StatusOr<v1::GenerateResult> result) {
          jobs_.Update(id, [&](VideoJob& j) {
            j.completed_at = absl::Now();
            j.cancel = nullptr;
            if (!result.ok()) {
              j.status = VideoJob::Status::kFailed;
              j.error = result.status();
              return;
            }
            j.status = VideoJob::Status::kCompleted;
            j.progress = 100;
            if (const v1::Output* o = PrimaryOutput(*result)) {
              j.content = o->data();
              j.mime_type = o->info().mime_type();
            }
          });
          {
            std::lock_guard<std::mutex> lock(cancel_mu_);
            job_cancels_.erase(id);
          }
          EndCall();
        },
        cancel.get(), options_.video_timeout);
    auto job_now = jobs_.Get(*id, absl::Now());
    if (!job_now) return SendStatus(res, absl::NotFoundError("video: vanished"));
    SendJson(res, VideoJobJson(*job_now, jobs_.retention()));
  }

  void GetVideo(const httplib::Request& req, httplib::Response& res) {
    auto job = jobs_.Get(req.matches[1], absl::Now());
    if (!job) return SendError(res, VideoNotFound(req.matches[1]));
    SendJson(res, VideoJobJson(*job, jobs_.retention()));
  }

  static ApiError VideoNotFound(const std::string& id) {
    ApiError e = ErrorForHttpStatus(
        404, absl::StrCat("video '", id, "' not found (unknown, deleted or past its retention)"));
    e.param = "video_id";
    return e;
  }

  void VideoContent(const httplib::Request& req, httplib::Response& res) {
    if (req.has_param("variant") && req.get_param_value("variant") != "video") {
      return SendStatus(res, FieldError("variant", "only \"video\" is available"));
    }
    auto job = jobs_.Get(req.matches[1], absl::Now());
    if (!job) return SendError(res, VideoNotFound(req.matches[1]));
    if (job->status == VideoJob::Status::kFailed) {
      return SendStatus(res, absl::FailedPreconditionError(absl::StrCat(
                                 "video '", job->id, "' failed: ", job->error.message())));
    }
    if (job->status != VideoJob::Status::kCompleted) {
      ApiError e = ErrorForHttpStatus(
          409, absl::StrCat("video '", job->id, "' is ", VideoStatusName(job->status),
                            " (progress ", job->progress, "%); poll GET /v1/videos/", job->id));
      e.code = "video_not_ready";
      return SendError(res, e);
    }
    res.status = 200;
    res.set_content(job->content,
                    job->mime_type.empty() ? "application/octet-stream" : job->mime_type.c_str());
  }

  void DeleteVideo(const httplib::Request& req, httplib::Response& res) {
    auto job = jobs_.Remove(req.matches[1]);
    if (!job) return SendError(res, VideoNotFound(req.matches[1]));
    if (job->cancel) job->cancel();  // a running job frees its stages at the next step
    SendJson(res, {{"id", job->id}, {"object", "video.deleted"}, {"deleted", true}});
  }

  HttpOptions options_;
  sdk::Client* client_;
  std::unique_ptr<TokenAuthenticator> auth_;
  JobStore jobs_;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Family<prometheus::Gauge>& jobs_gauge_;
  prometheus::Gauge& in_flight_gauge_;

  std::mutex models_mu_;
  std::optional<v1::ListModelsResponse> models_;
  absl::Time models_time_;

  // What Stop() cancels: running video jobs and synchronous / streamed batches.
  std::mutex cancel_mu_;
  std::map<std::string, std::function<void()>> job_cancels_;
  std::set<std::shared_ptr<Batch>> batches_;
  bool stopping_ = false;

  std::mutex in_flight_mu_;
  std::condition_variable in_flight_cv_;
  int in_flight_ = 0;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

HttpFrontDoor::HttpFrontDoor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpFrontDoor::~HttpFrontDoor() = default;

absl::StatusOr<std::unique_ptr<HttpFrontDoor>> HttpFrontDoor::Create(HttpOptions options,
                                                                     sdk::Client* client) {
  if (client == nullptr) return absl::InvalidArgumentError("HttpFrontDoor: no client");
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (options.max_connections < 1)
    return absl::InvalidArgumentError("--max-connections: must be >= 1");
  if (options.max_video_jobs < 1)
    return absl::InvalidArgumentError("--max-video-jobs: must be >= 1");
  return std::unique_ptr<HttpFrontDoor>(
      new HttpFrontDoor(std::make_unique<Impl>(std::move(options), client)));
}

absl::Status HttpFrontDoor::Start() { return impl_->Start(); }
int HttpFrontDoor::port() const { return impl_->port(); }
void HttpFrontDoor::Stop() { impl_->Stop(); }

}  // namespace diffmesh::http
