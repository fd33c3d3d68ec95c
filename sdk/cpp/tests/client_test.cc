// diffmesh::sdk::Client against an in-process fake GenerationService: blocking and async
// Generate (events in order, server status, cancellation from another thread), and ListModels'
// retries on UNAVAILABLE, the bearer token on every call.
#include "diffmesh/client.h"

#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/output/output_chunks.h"
#include "diffmesh/v1/generation.grpc.pb.h"
#include "gtest/gtest.h"

namespace diffmesh::sdk {
namespace {

constexpr int kSteps = 3;

// Answers by prompt: "ok" streams accepted, kSteps denoise steps and a result; "bad" fails with
// INVALID_ARGUMENT; "block" streams accepted and waits until the client cancels.
class FakeGenerationService final : public v1::GenerationService::Service {
 public:
  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    Record(*ctx);
    if (request->prompt() == "bad") {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "steps: 999 is outside 1..200");
    }
    v1::GenerateEvent accepted;
    *accepted.mutable_accepted()->mutable_request() = *request;
    writer->Write(accepted);
    if (request->prompt() == "block") {
      while (!ctx->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
      cancelled_seen_.fetch_add(1);
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    for (int i = 1; i <= kSteps; ++i) {
      v1::GenerateEvent e;
      e.mutable_progress()->set_stage("denoise");
      e.mutable_progress()->set_unit("step");
      e.mutable_progress()->set_done(i);
      e.mutable_progress()->set_total(kSteps);
      writer->Write(e);
    }
    // The image in two chunks ("gap": the second chunk's offset skips a byte).
    v1::GenerateEvent result;
    v1::OutputInfo info;
    info.set_name("image");
    info.set_kind(v1::OUTPUT_KIND_IMAGE);
    std::vector<v1::OutputChunk> chunks;
    ForEachOutputChunk(info, "\x89PNG fake", [&](v1::OutputChunk&& c) {
      chunks.push_back(std::move(c));
    }, /*max_chunk_bytes=*/5);
    if (request->prompt() == "gap") chunks[1].set_offset(chunks[1].offset() + 1);
    for (auto& c : chunks) {
      v1::GenerateEvent e;
      *e.mutable_output() = c;
      if (!c.has_info()) (*result.mutable_result()->add_outputs()->mutable_info()) = chunks[0].info();
      writer->Write(e);
    }
    result.mutable_result()->mutable_metadata()->mutable_request()->set_seed(request->seed());
    writer->Write(result);
    return grpc::Status::OK;
  }

  grpc::Status ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    Record(*ctx);
    response->set_default_model("fake");
    return grpc::Status::OK;
  }

  int cancelled_seen() const { return cancelled_seen_.load(); }

  // The "authorization" metadata of each call so far ("<none>" for a call without any).
  std::vector<std::string> authorization() {
    std::lock_guard<std::mutex> lock(mu_);
    return authorization_;
  }

 private:
  void Record(const grpc::ServerContext& ctx) {
    auto [begin, end] = ctx.client_metadata().equal_range("authorization");
    std::string value = "<none>";
    if (begin != end) value.assign(begin->second.data(), begin->second.size());
    std::lock_guard<std::mutex> lock(mu_);
    authorization_.push_back(value);
  }

  std::atomic<int> cancelled_seen_{0};
  std::mutex mu_;
  std::vector<std::string> authorization_;
};

std::unique_ptr<grpc::Server> StartServer(grpc::Service* service, int port, int* bound_port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", port), grpc::InsecureServerCredentials(),
                           bound_port);
  builder.RegisterService(service);
  return builder.BuildAndStart();
}

// A loopback port that was free a moment ago.
int UnusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = StartServer(&service_, 0, &port_);
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    ClientOptions o;
    o.address = absl::StrCat("127.0.0.1:", port_);
    auto client = Client::Create(o);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
  }
  void TearDown() override {
    client_.reset();
    server_->Shutdown();
  }

  static v1::GenerateRequest Request(const std::string& prompt) {
    v1::GenerateRequest r;
    r.set_prompt(prompt);
    r.set_seed(7);
    return r;
  }

  FakeGenerationService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientTest, AsyncSeesEveryEventInOrderThenTheResult) {
  std::vector<v1::GenerateEvent::EventCase> cases;
  absl::StatusOr<v1::GenerateResult> result = absl::UnknownError("not done");
  absl::Notification done;
  client_->GenerateAsync(
      Request("ok"), [&](const v1::GenerateEvent& e) { cases.push_back(e.event_case()); },
      [&](absl::StatusOr<v1::GenerateResult> r) {
        result = std::move(r);
        done.Notify();
      });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->outputs_size(), 1);
  EXPECT_EQ(result->outputs(0).data(), "\x89PNG fake");
  EXPECT_EQ(result->metadata().request().seed(), 7u);
  std::vector<v1::GenerateEvent::EventCase> expected = {v1::GenerateEvent::kAccepted};
  for (int i = 0; i < kSteps; ++i) expected.push_back(v1::GenerateEvent::kProgress);
  expected.push_back(v1::GenerateEvent::kOutput);
  expected.push_back(v1::GenerateEvent::kOutput);
  expected.push_back(v1::GenerateEvent::kResult);
  EXPECT_EQ(cases, expected);
}

TEST_F(ClientTest, AsyncReportsTheServersStatus) {
  absl::StatusOr<v1::GenerateResult> result;
  absl::Notification done;
  client_->GenerateAsync(Request("bad"), nullptr, [&](absl::StatusOr<v1::GenerateResult> r) {
    result = std::move(r);
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(result.status().message(), "steps: 999 is outside 1..200");
}

TEST_F(ClientTest, AsyncCancelFromAnotherThread) {
  CancelHandle cancel;
  absl::StatusOr<v1::GenerateResult> result;
  absl::Notification accepted, done;
  client_->GenerateAsync(
      Request("block"),
      [&](const v1::GenerateEvent& e) {
        if (e.has_accepted()) accepted.Notify();
      },
      [&](absl::StatusOr<v1::GenerateResult> r) {
        result = std::move(r);
        done.Notify();
      },
      &cancel);
  ASSERT_TRUE(accepted.WaitForNotificationWithTimeout(absl::Seconds(30)));
  std::thread([&cancel] { cancel.Cancel(); }).join();
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  EXPECT_TRUE(cancel.cancelled());
}

TEST_F(ClientTest, AsyncWithAHandleCancelledBeforehandFailsAtOnce) {
  CancelHandle cancel;
  cancel.Cancel();
  absl::StatusOr<v1::GenerateResult> result;
  bool called = false;
  client_->GenerateAsync(Request("ok"), nullptr, [&](absl::StatusOr<v1::GenerateResult> r) {
    result = std::move(r);
    called = true;
  }, &cancel);
  ASSERT_TRUE(called);  // on this thread, before GenerateAsync returned
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(ClientTest, ManyConcurrentAsyncCallsAllComplete) {
  constexpr int kCalls = 64;
  std::atomic<int> ok{0}, finished{0};
  absl::Notification all_done;
  for (int i = 0; i < kCalls; ++i) {
    client_->GenerateAsync(Request("ok"), nullptr, [&](absl::StatusOr<v1::GenerateResult> r) {
      if (r.ok()) ok.fetch_add(1);
      if (finished.fetch_add(1) + 1 == kCalls) all_done.Notify();
    });
  }
  ASSERT_TRUE(all_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(ok.load(), kCalls);
}

TEST_F(ClientTest, BlockingGenerateCancelFromAnotherThread) {
  CancelHandle cancel;
  auto result = client_->Generate(Request("block"), [&](const v1::GenerateEvent& e) {
    if (e.has_accepted()) std::thread([&cancel] { cancel.Cancel(); }).detach();
  }, &cancel);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
}

TEST_F(ClientTest, DeadlineEndsTheCall) {
  absl::StatusOr<v1::GenerateResult> result;
  absl::Notification done;
  client_->GenerateAsync(Request("block"), nullptr, [&](absl::StatusOr<v1::GenerateResult> r) {
    result = std::move(r);
    done.Notify();
  }, nullptr, absl::Milliseconds(200));
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
}

TEST(ClientRetryTest, ListModelsRetriesUntilTheServerComesUp) {
  const int port = UnusedPort();
  ClientOptions o;
  o.address = absl::StrCat("127.0.0.1:", port);
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok());
  FakeGenerationService service;
  std::unique_ptr<grpc::Server> server;
  std::thread starter([&] {
    absl::SleepFor(absl::Milliseconds(400));
    int bound = 0;
    server = StartServer(&service, port, &bound);
  });
  auto models = (*client)->ListModels(absl::Seconds(20));
  starter.join();
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->default_model(), "fake");
  server->Shutdown();
}

TEST(ClientRetryTest, ListModelsGivesUpWithUnavailable) {
  ClientOptions o;
  o.address = absl::StrCat("127.0.0.1:", UnusedPort());
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok());
  const absl::Time start = absl::Now();
  auto models = (*client)->ListModels(absl::Milliseconds(500));
  EXPECT_EQ(models.status().code(), absl::StatusCode::kUnavailable) << models.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // The same holds for the health check.
  EXPECT_EQ((*client)->WaitUntilServing(absl::Milliseconds(300)).code(),
            absl::StatusCode::kUnavailable);
}

TEST(ClientCreateTest, RejectsAnEmptyAddress) {
  ClientOptions o;
  o.address = "";
  EXPECT_EQ(Client::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ClientCreateTest, TlsFileErrorsNameTheFileAndBadTokensAreRefused) {
  ClientOptions o;
  o.tls = TlsOptions{};
  o.tls->root_ca_file = "/nonexistent/ca.pem";
  auto missing = Client::Create(o);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/ca.pem"), std::string::npos)
      << missing.status();
  o.tls->root_ca_file = "";
  o.tls->cert_file = "/nonexistent/client.pem";
  EXPECT_EQ(Client::Create(o).status().code(), absl::StatusCode::kInvalidArgument)
      << "a certificate without its key";
  o.tls.reset();
  o.bearer_token = "two words";
  EXPECT_EQ(Client::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ClientTokenTest, EveryCallCarriesTheBearerToken) {
  FakeGenerationService service;
  int port = 0;
  auto server = StartServer(&service, 0, &port);
  ASSERT_NE(server, nullptr);
  ClientOptions o;
  o.address = absl::StrCat("127.0.0.1:", port);
  o.bearer_token = "t0k3n-xyz";
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();
  v1::GenerateRequest r;
  r.set_prompt("ok");
  ASSERT_TRUE((*client)->Generate(r).ok());
  absl::Notification done;
  (*client)->GenerateAsync(r, nullptr, [&](absl::StatusOr<v1::GenerateResult>) { done.Notify(); });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_TRUE((*client)->ListModels().ok());
  EXPECT_EQ(service.authorization(), std::vector<std::string>(3, "Bearer t0k3n-xyz"));

  // Without a token nothing is sent.
  o.bearer_token.clear();
  auto plain = Client::Create(o);
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE((*plain)->ListModels().ok());
  EXPECT_EQ(service.authorization().back(), "<none>");
  server->Shutdown();
}

TEST_F(ClientTest, AnOutputWhoseChunksDoNotJoinIsDataLoss) {
  auto blocking = client_->Generate(Request("gap"));
  EXPECT_EQ(blocking.status().code(), absl::StatusCode::kDataLoss) << blocking.status();
  absl::StatusOr<v1::GenerateResult> async_result;
  absl::Notification done;
  client_->GenerateAsync(Request("gap"), nullptr, [&](absl::StatusOr<v1::GenerateResult> r) {
    async_result = std::move(r);
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(async_result.status().code(), absl::StatusCode::kDataLoss) << async_result.status();
}

}  // namespace
}  // namespace diffmesh::sdk
