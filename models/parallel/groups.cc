#include "models/parallel/groups.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace diffmesh::models::parallel {
namespace {

std::unique_ptr<Communicator>& Slot(ParallelGroups& groups, Axis axis) {
  switch (axis) {
    case Axis::kTp:
      return groups.tp;
    case Axis::kUlysses:
      return groups.ulysses;
    case Axis::kRing:
      return groups.ring;
    case Axis::kSp:
      return groups.sp;
    case Axis::kCfg:
      break;
  }
  return groups.cfg;
}

}  // namespace

Communicator& ParallelGroups::Get(Axis axis) const {
  return *Slot(const_cast<ParallelGroups&>(*this), axis);
}

absl::StatusOr<ParallelGroups> CreateParallelGroups(Communicator& world, const RankLayout& layout) {
  if (world.size() != layout.world_size() || world.rank() != layout.rank()) {
    return absl::InvalidArgumentError(
        absl::StrCat("communicator rank ", world.rank(), " of ", world.size(),
                     " does not match layout rank ", layout.rank(), " of ", layout.world_size()));
  }
  ParallelGroups groups;
  for (Axis axis : {Axis::kTp, Axis::kUlysses, Axis::kRing, Axis::kSp, Axis::kCfg}) {
    for (const std::vector<int>& ranks : RankLayout::AllGroups(layout.config(), axis)) {
      ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, world.Split(ranks));
      if (comm != nullptr) Slot(groups, axis) = std::move(comm);
    }
    if (Slot(groups, axis) == nullptr) {
      return absl::InternalError(absl::StrCat("rank ", world.rank(), " is in no ",
                                              AxisName(axis), " group"));
    }
  }
  return groups;
}

}  // namespace diffmesh::models::parallel
