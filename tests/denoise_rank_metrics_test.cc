// Every rank of a denoise group serves its own step times: two diffmesh-denoise processes (one
// per rank, as the Helm chart runs them, each with its own metrics port) denoise one request,
// and each rank's /metrics counts the steps under its own rank label.
#include <random>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/tensor/wire_tensor.h"
#include "diffmesh/client.h"
#include "diffmesh/v1/stages.grpc.pb.h"
#include "common/tensor/testing/random_tensor.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace diffmesh {
namespace {

using testing::Binary;
using testing::Process;

TEST(DenoiseRankMetricsTest, EachRankCountsItsStepsUnderItsRank) {
  const int base = testing::FreePorts(4);  // gRPC, rendezvous, metrics of rank 0 and rank 1
  ASSERT_GT(base, 0);
  const std::string log0 = absl::StrCat(::testing::TempDir(), "/rank0.log");
  const std::string log1 = absl::StrCat(::testing::TempDir(), "/rank1.log");
  const std::vector<std::string> common = {"--cfg_degree=2", "--launch_ranks=false",
                                           absl::StrCat("--master_port=", base + 1)};
  std::vector<std::string> argv0 = {Binary("denoise"), "--host=127.0.0.1",
                                    absl::StrCat("--port=", base),
                                    absl::StrCat("--metrics_port=", base + 2), "--rank=0"};
  std::vector<std::string> argv1 = {Binary("denoise"), "--host=127.0.0.1",
                                    absl::StrCat("--metrics_port=", base + 3), "--rank=1"};
  argv0.insert(argv0.end(), common.begin(), common.end());
  argv1.insert(argv1.end(), common.begin(), common.end());
  Process rank0(argv0, log0), rank1(argv1, log1);
  const std::string address = absl::StrCat("127.0.0.1:", base);
  absl::Status serving = sdk::WaitUntilServing(address, absl::Seconds(120));
  ASSERT_TRUE(serving.ok()) << serving << "\n" << testing::ReadFile(log0) << testing::ReadFile(log1);

  std::mt19937 rng(3);
  v1::DenoiseRequest r;
  r.set_model("glm-image-tiny");
  r.set_height(64);
  r.set_width(64);
  r.set_steps(3);
  r.mutable_guidance()->mutable_main()->set_cfg_scale(1.5f);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_PNG);
  r.set_seed(5);
  std::vector<int64_t> grid = {1, 2, 3, 4};
  *r.mutable_prior_tokens() = MakeTensor(DType::kInt64, {2, 2}, grid.data(), grid.size() * 8);
  *r.mutable_prompt_embeds() = testing::RandomFloats({1, 4, 64}, rng);
  *r.mutable_negative_prompt_embeds() = testing::RandomFloats({1, 1, 64}, rng);
  auto stub = v1::DenoiseService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  auto reader = stub->Denoise(&ctx, r);
  v1::DenoiseEvent e;
  int steps = 0;
  while (reader->Read(&e)) steps += e.has_progress();
  grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(steps, 3);

  for (int rank : {0, 1}) {
    const std::string metrics = testing::HttpGet(base + 2 + rank, "/metrics");
    const std::string count = absl::StrCat(
        "diffmesh_denoise_rank_step_duration_seconds_count{model=\"glm-image-tiny\",rank=\"", rank,
        "\"} 3");
    EXPECT_NE(metrics.find(count), std::string::npos) << "rank " << rank << ":\n" << metrics;
    // Request metrics come from rank 0 alone.
    EXPECT_EQ(metrics.find("diffmesh_denoise_step_duration_seconds_count") != std::string::npos,
              rank == 0)
        << "rank " << rank;
  }
}

}  // namespace
}  // namespace diffmesh
