// Test support: several Gloo ranks as threads of one process.
#ifndef DIFFMESH_MODELS_PARALLEL_TEST_RANKS_H_
#define DIFFMESH_MODELS_PARALLEL_TEST_RANKS_H_

#include <functional>

#include "common/process/subprocess.h"
#include "models/parallel/comm.h"

namespace diffmesh::models::parallel::testing {

using ::diffmesh::FreeLoopbackPort;

// Runs body(comm) on `world` threads, each with its own Gloo communicator of that world size
// (rendezvous through the store on a free loopback port), and joins them. A rank that fails to
// connect records a test failure. Collectives time out after 30 s so that a broken test fails
// instead of hanging. Turns LibTorch 2.x's flight recorder off (see test_ranks.cc).
#ifdef DIFFMESH_HAVE_GLOO
void RunGlooRanks(int world, const std::function<void(Communicator& comm)>& body);
#endif

}  // namespace diffmesh::models::parallel::testing

#endif  // DIFFMESH_MODELS_PARALLEL_TEST_RANKS_H_
