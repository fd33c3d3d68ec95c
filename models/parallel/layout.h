// Rank layout of the denoise group: CFG-parallel × sequence parallel (Ulysses × ring) × tensor
// parallel. Pure arithmetic, no communication: every rank derives the same layout from the same
// config, which is what lets them create their sub-communicators collectively.
#ifndef DIFFMESH_MODELS_PARALLEL_LAYOUT_H_
#define DIFFMESH_MODELS_PARALLEL_LAYOUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh::models::parallel {

// Parallel degrees of one denoise group. Every degree is ≥ 1.
struct ParallelConfig {
  int tp = 1;       // tensor parallel: attention heads / MLP columns split across ranks
  int ulysses = 1;  // Ulysses sequence parallel: all-to-all between sequence and head sharding
  int ring = 1;     // ring attention sequence parallel: K/V blocks passed around a ring
  int cfg = 1;      // classifier-free guidance: conditional and unconditional passes in parallel

  int sp() const { return ulysses * ring; }
  int world() const { return tp * sp() * cfg; }
  // "tp 1 × ulysses 2 × ring 1 × cfg 2 = 4".
  std::string ToString() const;
};

// The axes a rank has a coordinate along. kSp is the combined Ulysses × ring axis.
enum class Axis { kTp, kUlysses, kRing, kSp, kCfg };

const char* AxisName(Axis axis);

// Where one rank sits. Ranks are ordered tp fastest-varying, then Ulysses, then ring, then cfg:
//   rank = tp_rank + tp · (ulysses_rank + ulysses · (ring_rank + ring · cfg_rank))
// so tensor-parallel peers are adjacent (the NVLink-heaviest traffic stays on neighbouring GPUs)
// and the two CFG halves are the two contiguous halves of the world.
class RankLayout {
 public:
  // Validates everything up front (INVALID_ARGUMENT): degrees ≥ 1, world_size ==
  // config.world(), 0 ≤ rank < world_size, num_heads ≥ 1 and divisible by ulysses × tp (Ulysses
  // hands each rank num_heads / (ulysses · tp) whole heads). num_heads 0: the heads are not
  // checked here, the model splits them itself (LTX-2's transformer checks tp and gathers the
  // keys and values where its heads do not divide by ulysses); heads_per_rank() is then 0.
  static absl::StatusOr<RankLayout> Create(const ParallelConfig& config, int world_size, int rank,
                                           int num_heads);

  const ParallelConfig& config() const { return config_; }
  int rank() const { return rank_; }
  int world_size() const { return config_.world(); }
  int num_heads() const { return num_heads_; }
  // Heads each rank holds inside Ulysses attention: num_heads / (ulysses · tp); 0 for num_heads 0.
  int heads_per_rank() const { return num_heads_ / (config_.ulysses * config_.tp); }

  int tp_rank() const { return tp_rank_; }
  int ulysses_rank() const { return ulysses_rank_; }
  int ring_rank() const { return ring_rank_; }
  // ulysses_rank + ulysses · ring_rank: the position of this rank's shard in the full sequence.
  int sp_rank() const { return ulysses_rank_ + config_.ulysses * ring_rank_; }
  int cfg_rank() const { return cfg_rank_; }

  // Coordinate along / degree of `axis` (kSp: sp_rank() / sp()).
  int Coordinate(Axis axis) const;
  static int Degree(const ParallelConfig& config, Axis axis);

  // Global ranks of the `axis` group this rank belongs to, ordered by their coordinate along the
  // axis (so the position of a rank in the list is its rank inside the sub-communicator). The
  // groups of one axis partition the world.
  std::vector<int> Group(Axis axis) const;

  // Every group of `axis`, ordered by smallest member. All ranks enumerate them identically, the
  // order in which they must create sub-communicators collectively.
  static std::vector<std::vector<int>> AllGroups(const ParallelConfig& config, Axis axis);

  // Global rank of a coordinate tuple (no range checks beyond the caller's).
  static int RankOf(const ParallelConfig& config, int tp_rank, int ulysses_rank, int ring_rank,
                    int cfg_rank);

 private:
  RankLayout(const ParallelConfig& config, int rank, int num_heads);

  ParallelConfig config_;
  int rank_;
  int num_heads_;
  int tp_rank_;
  int ulysses_rank_;
  int ring_rank_;
  int cfg_rank_;
};

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_LAYOUT_H_
