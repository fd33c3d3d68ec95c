#include "models/parallel/layout.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace diffmesh::models::parallel {

std::string ParallelConfig::ToString() const {
  return absl::StrCat("tp ", tp, " × ulysses ", ulysses, " × ring ", ring, " × cfg ", cfg, " = ",
                      world());
}

const char* AxisName(Axis axis) {
  switch (axis) {
    case Axis::kTp:
      return "tp";
    case Axis::kUlysses:
      return "ulysses";
    case Axis::kRing:
      return "ring";
    case Axis::kSp:
      return "sp";
    case Axis::kCfg:
      return "cfg";
  }
  return "?";
}

absl::StatusOr<RankLayout> RankLayout::Create(const ParallelConfig& config, int world_size,
                                              int rank, int num_heads) {
  const std::pair<const char*, int> degrees[] = {
      {"tp", config.tp}, {"ulysses", config.ulysses}, {"ring", config.ring}, {"cfg", config.cfg}};
  for (const auto& [name, degree] : degrees) {
    if (degree < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("parallel degree ", name, " = ", degree, " must be >= 1"));
    }
  }
  if (world_size != config.world()) {
    return absl::InvalidArgumentError(
        absl::StrCat("world size ", world_size, " != ", config.ToString()));
  }
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " out of range [0, ", world_size, ")"));
  }
  if (num_heads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_heads ", num_heads, " must be >= 1 (or 0: not checked)"));
  }
  if (num_heads % (config.ulysses * config.tp) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_heads ", num_heads, " not divisible by ulysses ", config.ulysses, " × tp ",
        config.tp, " = ", config.ulysses * config.tp));
  }
  return RankLayout(config, rank, num_heads);
}

RankLayout::RankLayout(const ParallelConfig& config, int rank, int num_heads)
    : config_(config), rank_(rank), num_heads_(num_heads) {
  int r = rank;
  tp_rank_ = r % config.tp;
  r /= config.tp;
  ulysses_rank_ = r % config.ulysses;
  r /= config.ulysses;
  ring_rank_ = r % config.ring;
  cfg_rank_ = r / config.ring;
}

int RankLayout::RankOf(const ParallelConfig& c, int tp_rank, int ulysses_rank, int ring_rank,
                       int cfg_rank) {
  return tp_rank + c.tp * (ulysses_rank + c.ulysses * (ring_rank + c.ring * cfg_rank));
}

int RankLayout::Coordinate(Axis axis) const {
  switch (axis) {
    case Axis::kTp:
      return tp_rank_;
    case Axis::kUlysses:
      return ulysses_rank_;
    case Axis::kRing:
      return ring_rank_;
    case Axis::kSp:
      return sp_rank();
    case Axis::kCfg:
      return cfg_rank_;
  }
  return 0;
}

int RankLayout::Degree(const ParallelConfig& config, Axis axis) {
  switch (axis) {
    case Axis::kTp:
      return config.tp;
    case Axis::kUlysses:
      return config.ulysses;
    case Axis::kRing:
      return config.ring;
    case Axis::kSp:
      return config.sp();
    case Axis::kCfg:
      return config.cfg;
  }
  return 1;
}

std::vector<int> RankLayout::Group(Axis axis) const {
  const ParallelConfig& c = config_;
  std::vector<int> ranks;
  ranks.reserve(Degree(c, axis));
  // Vary the axis' own coordinate(s), hold the others at this rank's values.
  switch (axis) {
    case Axis::kTp:
      for (int t = 0; t < c.tp; ++t) {
        ranks.push_back(RankOf(c, t, ulysses_rank_, ring_rank_, cfg_rank_));
      }
      break;
    case Axis::kUlysses:
      for (int u = 0; u < c.ulysses; ++u) {
        ranks.push_back(RankOf(c, tp_rank_, u, ring_rank_, cfg_rank_));
      }
      break;
    case Axis::kRing:
      for (int g = 0; g < c.ring; ++g) {
        ranks.push_back(RankOf(c, tp_rank_, ulysses_rank_, g, cfg_rank_));
      }
      break;
    case Axis::kSp:
      // Ordered by sp_rank = ulysses_rank + ulysses · ring_rank.
      for (int g = 0; g < c.ring; ++g) {
        for (int u = 0; u < c.ulysses; ++u) {
          ranks.push_back(RankOf(c, tp_rank_, u, g, cfg_rank_));
        }
      }
      break;
    case Axis::kCfg:
      for (int f = 0; f < c.cfg; ++f) {
        ranks.push_back(RankOf(c, tp_rank_, ulysses_rank_, ring_rank_, f));
      }
      break;
  }
  return ranks;
}

std::vector<std::vector<int>> RankLayout::AllGroups(const ParallelConfig& config, Axis axis) {
  std::vector<std::vector<int>> groups;
  // A group is listed when its smallest member (coordinate 0 along the axis) comes up.
  for (int r = 0; r < config.world(); ++r) {
    RankLayout layout(config, r, /*num_heads=*/1);
    if (layout.Coordinate(axis) == 0) groups.push_back(layout.Group(axis));
  }
  return groups;
}

}  // namespace diffmesh::models::parallel
