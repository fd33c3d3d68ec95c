// The stage cores' exception boundary: LibTorch exceptions become statuses.
#include "services/stage_common/torch_errors.h"

#include <ATen/ATen.h>

#include <new>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

TEST(TorchErrorsTest, AShapeCheckDeepInsideAnOpIsInternal) {
  absl::Status s = CatchTorchErrors("denoise", []() -> absl::Status {
    at::Tensor bad = at::ones({2, 3}).matmul(at::ones({4, 5}));  // TORCH_CHECK in matmul
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_TRUE(absl::StartsWith(s.message(), "denoise failed: ")) << s;
  EXPECT_EQ(s.message().find("Exception raised from"), std::string::npos)
      << "carries LibTorch's backtrace: " << s;
}

TEST(TorchErrorsTest, OutOfMemoryIsResourceExhausted) {
  absl::StatusOr<int> s = CatchTorchErrors("ar", []() -> absl::StatusOr<int> {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory. Tried to allocate 2.00 GiB");
    return 1;
  });
  EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted) << s.status();
  EXPECT_NE(s.status().message().find("Tried to allocate"), std::string::npos) << s.status();
  absl::Status host = CatchTorchErrors("encoder", []() -> absl::Status { throw std::bad_alloc(); });
  EXPECT_EQ(host.code(), absl::StatusCode::kResourceExhausted) << host;
}

TEST(TorchErrorsTest, ResultsAndStatusesPassThrough) {
  absl::StatusOr<int> ok = CatchTorchErrors("ar", []() -> absl::StatusOr<int> { return 7; });
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 7);
  absl::Status refused = CatchTorchErrors(
      "ar", []() -> absl::Status { return absl::InvalidArgumentError("prompt: too long"); });
  EXPECT_EQ(refused, absl::InvalidArgumentError("prompt: too long"));
}

}  // namespace
}  // namespace diffmesh
