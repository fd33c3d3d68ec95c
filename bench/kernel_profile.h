// GPU kernel time of one call, by kernel name, through LibTorch's Kineto profiler (GPU builds
// with LibTorch 2.x only): for finding where a benchmark's time goes on a host without Nsight.
#ifndef DIFFMESH_BENCH_KERNEL_PROFILE_H_
#define DIFFMESH_BENCH_KERNEL_PROFILE_H_

#include <functional>
#include <string>

namespace diffmesh::bench {

// Runs `fn` once under the profiler (`fn` must wait for the device before returning) and returns
// a table of the `top` kernels by summed GPU time, with their counts and share of the total.
std::string ProfileKernels(const std::function<void()>& fn, int top);

}  // namespace diffmesh::bench

#endif  // DIFFMESH_BENCH_KERNEL_PROFILE_H_
