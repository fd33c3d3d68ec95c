// Latency statistics of a load test: percentiles by linear interpolation between the closest
// ranks (numpy's default), so p50 <= p90 <= p99 always holds.
#ifndef DIFFMESH_LOADTEST_STATS_H_
#define DIFFMESH_LOADTEST_STATS_H_

#include <cstdint>
#include <vector>

namespace diffmesh::loadtest {

struct Summary {
  int64_t count = 0;
  double mean = 0;
  double min = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
  double max = 0;
};

// The q-quantile (0 <= q <= 1) of `sorted` (ascending, non-empty).
double Percentile(const std::vector<double>& sorted, double q);

// All zeros for an empty input.
Summary Summarize(std::vector<double> values);

}  // namespace diffmesh::loadtest

#endif  // DIFFMESH_LOADTEST_STATS_H_
