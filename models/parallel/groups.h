// The sub-communicators of one rank, created from its RankLayout.
#ifndef DIFFMESH_MODELS_PARALLEL_GROUPS_H_
#define DIFFMESH_MODELS_PARALLEL_GROUPS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "models/parallel/comm.h"
#include "models/parallel/layout.h"

namespace diffmesh::models::parallel {

// This rank's communicator along every axis (groups of one rank are SingleRankCommunicators).
// A group's rank i is the i-th entry of RankLayout::Group(axis), i.e. its coordinate.
struct ParallelGroups {
  std::unique_ptr<Communicator> tp;
  std::unique_ptr<Communicator> ulysses;
  std::unique_ptr<Communicator> ring;
  std::unique_ptr<Communicator> sp;
  std::unique_ptr<Communicator> cfg;

  Communicator& Get(Axis axis) const;
};

// Collective over `world` (whose size and rank must match the layout): splits off every group of
// every axis in RankLayout::AllGroups order, keeping this rank's.
absl::StatusOr<ParallelGroups> CreateParallelGroups(Communicator& world, const RankLayout& layout);

}  // namespace diffmesh::models::parallel

#endif  // DIFFMESH_MODELS_PARALLEL_GROUPS_H_
