// HttpFrontDoor against an in-process fake GenerationService (gRPC only in this test): the paths
// the stub stages cannot show — an edit model that takes the images, a video model (frames from
// seconds, MP4 content, the first-frame input), progress of a running job and its cancellation,
// and the streamed events in order.
#include "services/http/http_server.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/output/output_chunks.h"
#include "diffmesh/v1/generation.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace diffmesh::http {
namespace {

using nlohmann::json;

constexpr char kPng[] = "\x89PNG fake image";
constexpr char kMp4[] =
    "\0\0\0\x18"
    "ftypisom fake mp4";

// Two models: "edit" (image; takes EDIT_IMAGE) and "video" (video with audio; takes FIRST_FRAME;
// 8k+1 frames at 24 fps). Generate records the request; prompt "block" reports denoise step 1/4
// and waits until the call is cancelled.
class FakeService final : public v1::GenerationService::Service {
 public:
  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateEvent>* writer) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_ = *request;
    }
    const bool video = request->model() == "video";
    v1::GenerateEvent accepted;
    *accepted.mutable_accepted()->mutable_request() = *request;
    writer->Write(accepted);
    for (const char* stage : {"encoder", "denoise"}) {
      v1::GenerateEvent started;
      started.mutable_stage()->set_stage(stage);
      started.mutable_stage()->set_kind(v1::StageEvent::KIND_STARTED);
      writer->Write(started);
    }
    v1::GenerateEvent progress;
    progress.mutable_progress()->set_stage("denoise");
    progress.mutable_progress()->set_unit("step");
    progress.mutable_progress()->set_done(1);
    progress.mutable_progress()->set_total(4);
    writer->Write(progress);
    if (request->prompt() == "block") {
      while (!ctx->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
      cancelled_.fetch_add(1);
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    v1::OutputInfo info;
    info.set_name(video ? "video" : "image");
    info.set_kind(video ? v1::OUTPUT_KIND_VIDEO : v1::OUTPUT_KIND_IMAGE);
    info.set_mime_type(video ? "video/mp4" : "image/png");
    info.set_width(request->width());
    info.set_height(request->height());
    const std::string data = video ? std::string(kMp4, sizeof(kMp4) - 1) : kPng;
    v1::GenerateEvent result;
    ForEachOutputChunk(info, data, [&](v1::OutputChunk&& c) {
      v1::GenerateEvent e;
      *e.mutable_output() = c;
      writer->Write(e);
    });
    *result.mutable_result()->add_outputs()->mutable_info() = info;
    *result.mutable_result()->mutable_metadata()->mutable_request() = *request;
    writer->Write(result);
    return grpc::Status::OK;
  }

  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    response->set_default_model("edit");
    v1::ModelInfo* edit = response->add_models();
    edit->set_name("edit");
    edit->set_kind(v1::MODEL_KIND_IMAGE);
    edit->add_input_roles(v1::MEDIA_ROLE_EDIT_IMAGE);
    edit->add_stages("encoder");
    edit->add_stages("denoise");
    v1::ModelInfo* video = response->add_models();
    video->set_name("video");
    video->set_kind(v1::MODEL_KIND_VIDEO_WITH_AUDIO);
    video->add_input_roles(v1::MEDIA_ROLE_FIRST_FRAME);
    video->add_stages("encoder");
    video->add_stages("denoise");
    video->mutable_defaults()->set_frame_rate(24);
    video->mutable_defaults()->set_num_frames(121);
    video->mutable_defaults()->set_width(768);
    video->mutable_defaults()->set_height(512);
    video->mutable_limits()->mutable_frames()->set_multiple(8);
    video->mutable_limits()->mutable_frames()->set_offset(1);
    video->mutable_limits()->mutable_frames()->set_max_frames(257);
    return grpc::Status::OK;
  }

  v1::GenerateRequest last() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }
  int cancelled() const { return cancelled_.load(); }

 private:
  std::mutex mu_;
  v1::GenerateRequest last_;
  std::atomic<int> cancelled_{0};
};

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int grpc_port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &grpc_port);
    builder.RegisterService(&service_);
    grpc_ = builder.BuildAndStart();
    ASSERT_GT(grpc_port, 0);
    sdk::ClientOptions options;
    options.address = absl::StrCat("127.0.0.1:", grpc_port);
    auto client = sdk::Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    HttpOptions http;
    http.port = 0;
    auto door = HttpFrontDoor::Create(http, client_.get());
    ASSERT_TRUE(door.ok()) << door.status();
    door_ = *std::move(door);
    ASSERT_TRUE(door_->Start().ok());
    http_ = std::make_unique<httplib::Client>("127.0.0.1", door_->port());
    http_->set_read_timeout(30, 0);
  }

  void TearDown() override {
    if (door_) door_->Stop();
    if (grpc_) grpc_->Shutdown();
  }

  json WaitForVideo(const std::string& id) {
    for (int i = 0; i < 400; ++i) {
      auto res = http_->Get(("/v1/videos/" + id).c_str());
      EXPECT_TRUE(res);
      json job = json::parse(res->body);
      if (job["status"] == "completed" || job["status"] == "failed") return job;
      absl::SleepFor(absl::Milliseconds(10));
    }
    ADD_FAILURE() << "video " << id << " did not finish";
    return {};
  }

  FakeService service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<sdk::Client> client_;
  std::unique_ptr<HttpFrontDoor> door_;
  std::unique_ptr<httplib::Client> http_;
};

TEST_F(HttpServerTest, EditImagesReachTheModelAsEditInputs) {
  httplib::MultipartFormDataItems form = {
      {"image[]", "first-image-bytes", "a.png", "image/png"},
      {"image[]", "second-image-bytes", "b.png", "image/png"},
      {"prompt", "make it red", "", ""},
      {"model", "edit", "", ""},
      {"size", "64x32", "", ""},
      {"seed", "5", "", ""},
  };
  auto res = http_->Post("/v1/images/edits", form);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const v1::GenerateRequest sent = service_.last();
  ASSERT_EQ(sent.inputs_size(), 2);
  EXPECT_EQ(sent.inputs(0).role(), v1::MEDIA_ROLE_EDIT_IMAGE);
  EXPECT_EQ(sent.inputs(0).data(), "first-image-bytes");
  EXPECT_EQ(sent.inputs(1).data(), "second-image-bytes");
  EXPECT_EQ(sent.prompt(), "make it red");
  EXPECT_EQ(sent.width(), 64);
  EXPECT_EQ(sent.seed(), 5u);
  json body = json::parse(res->body);
  std::string image;
  ASSERT_TRUE(absl::Base64Unescape(body["data"][0]["b64_json"].get<std::string>(), &image));
  EXPECT_EQ(image, kPng);
}

TEST_F(HttpServerTest, VideoJobFromSecondsReturnsTheMp4) {
  auto res = http_->Post(
      "/v1/videos",
      json{{"model", "video"}, {"prompt", "waves"}, {"seconds", "4"}, {"size", "128x64"}}.dump(),
      "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const std::string id = json::parse(res->body)["id"];
  json job = WaitForVideo(id);
  EXPECT_EQ(job["status"], "completed") << job.dump();
  EXPECT_EQ(job["progress"], 100);
  EXPECT_EQ(job["size"], "128x64");
  EXPECT_THAT(job["seconds"].get<std::string>(), ::testing::StartsWith("4.04"));  // 97 / 24
  const v1::GenerateRequest sent = service_.last();
  EXPECT_EQ(sent.num_frames(), 97);  // 4 s at 24 fps: 96, the nearest 8k+1
  EXPECT_EQ(sent.width(), 128);
  auto content = http_->Get(("/v1/videos/" + id + "/content").c_str());
  ASSERT_TRUE(content);
  EXPECT_EQ(content->status, 200);
  EXPECT_EQ(content->get_header_value("Content-Type"), "video/mp4");
  EXPECT_EQ(content->body, std::string(kMp4, sizeof(kMp4) - 1));
}

TEST_F(HttpServerTest, VideoOfAnUnknownModelIs404) {
  auto res = http_->Post("/v1/videos", json{{"model", "nope"}, {"prompt", "x"}}.dump(),
                         "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  json error = json::parse(res->body)["error"];
  EXPECT_EQ(error["param"], "model");
  EXPECT_EQ(error["code"], "model_not_found");
}

TEST_F(HttpServerTest, InputReferenceIsTheFirstFrame) {
  httplib::MultipartFormDataItems form = {
      {"model", "video", "", ""},
      {"prompt", "from this frame", "", ""},
      {"input_reference", "frame-bytes", "f.jpg", "image/jpeg"},
  };
  auto res = http_->Post("/v1/videos", form);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  WaitForVideo(json::parse(res->body)["id"]);
  const v1::GenerateRequest sent = service_.last();
  ASSERT_EQ(sent.inputs_size(), 1);
  EXPECT_EQ(sent.inputs(0).role(), v1::MEDIA_ROLE_FIRST_FRAME);
  EXPECT_EQ(sent.inputs(0).data(), "frame-bytes");
}

TEST_F(HttpServerTest, RunningJobReportsProgressAndDeleteCancelsIt) {
  auto res = http_->Post("/v1/videos", json{{"model", "video"}, {"prompt", "block"}}.dump(),
                         "application/json");
  ASSERT_TRUE(res);
  const std::string id = json::parse(res->body)["id"];
  json job;
  for (int i = 0; i < 400; ++i) {
    job = json::parse(http_->Get(("/v1/videos/" + id).c_str())->body);
    if (job["progress"].get<int>() > 0) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  // Two stages, denoise at 1/4: 12 %.
  EXPECT_EQ(job["status"], "in_progress");
  EXPECT_EQ(job["progress"], 12);
  EXPECT_EQ(http_->Get(("/v1/videos/" + id + "/content").c_str())->status, 409);
  auto del = http_->Delete(("/v1/videos/" + id).c_str());
  ASSERT_TRUE(del);
  EXPECT_EQ(json::parse(del->body)["deleted"], true);
  for (int i = 0; i < 400 && service_.cancelled() == 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(service_.cancelled(), 1);
  EXPECT_EQ(http_->Get(("/v1/videos/" + id).c_str())->status, 404);
}

TEST_F(HttpServerTest, StreamedEventsInOrder) {
  auto res = http_->Post(
      "/v1/images/generations",
      json{{"model", "edit"}, {"prompt", "x"}, {"size", "32x32"}, {"stream", true}}.dump(),
      "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  std::vector<std::string> events;
  for (absl::string_view line : absl::StrSplit(res->body, '\n')) {
    if (absl::ConsumePrefix(&line, "event: ")) events.emplace_back(line);
  }
  EXPECT_THAT(events, ::testing::ElementsAre("image_generation.accepted", "image_generation.stage",
                                             "image_generation.stage", "image_generation.progress",
                                             "image_generation.completed"));
}

}  // namespace
}  // namespace diffmesh::http
