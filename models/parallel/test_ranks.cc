#include "models/parallel/test_ranks.h"


#include <cstdlib>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#ifdef DIFFMESH_HAVE_GLOO
#include "models/parallel/gloo_comm.h"
#endif

namespace diffmesh::models::parallel::testing {

#ifdef DIFFMESH_HAVE_GLOO
void RunGlooRanks(int world, const std::function<void(Communicator& comm)>& body) {
  // LibTorch 2.x records every Gloo operation in a process-wide flight recorder, which crashed
  // (SIGSEGV in its bookkeeping, 2.11) with several ranks as threads of one process; with
  // one rank per process, as in deployment, it is harmless. Off for these tests, unless the
  // environment says otherwise. It is read once, before the first operation.
  setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
  setenv("TORCH_NCCL_TRACE_BUFFER_SIZE", "0", /*overwrite=*/0);
  const int port = FreeLoopbackPort();
  ASSERT_GT(port, 0) << "no free loopback port";
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      RendezvousOptions options;
      options.world_size = world;
      options.rank = rank;
      options.master_addr = "127.0.0.1";
      options.master_port = port;
      options.timeout = std::chrono::seconds(30);
      auto comm = CreateGlooCommunicator(options);
      ASSERT_TRUE(comm.ok()) << "rank " << rank << ": " << comm.status();
      body(**comm);
    });
  }
  for (std::thread& t : threads) t.join();
}
#endif  // DIFFMESH_HAVE_GLOO

}  // namespace diffmesh::models::parallel::testing
