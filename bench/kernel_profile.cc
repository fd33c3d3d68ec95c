#include "bench/kernel_profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <utility>
#include <vector>

namespace diffmesh::bench {

std::string ProfileKernels(const std::function<void()>& fn, int top) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  fn();
  std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
  std::map<std::string, std::pair<double, int>> by_name;  // name → (µs, count)
  double total = 0;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    const double us = static_cast<double>(e.durationNs()) / 1e3;
    auto& slot = by_name[e.name().substr(0, 110)];
    slot.first += us;
    slot.second += 1;
    total += us;
  }
  std::vector<std::pair<std::string, std::pair<double, int>>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  std::string out;
  char line[512];
  std::snprintf(line, sizeof(line), "GPU kernel time %.1f ms in %zu kernel names\n", total / 1e3,
                rows.size());
  out += line;
  for (int i = 0; i < top && i < static_cast<int>(rows.size()); ++i) {
    std::snprintf(line, sizeof(line), "%8.2f ms %5.1f%% %6d  %s\n", rows[i].second.first / 1e3,
                  100.0 * rows[i].second.first / total, rows[i].second.second,
                  rows[i].first.c_str());
    out += line;
  }
  return out;
}

}  // namespace diffmesh::bench
