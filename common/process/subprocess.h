// Child processes of diffmesh binaries (`diffmesh up`'s services, a denoise group's local
// ranks): started so that they die with their parent, stopped with SIGTERM then SIGKILL.
#ifndef DIFFMESH_COMMON_PROCESS_SUBPROCESS_H_
#define DIFFMESH_COMMON_PROCESS_SUBPROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace diffmesh {

// fork + execv of argv[0]; the child gets SIGTERM when this process dies (PR_SET_PDEATHSIG)
// and starts with no signals blocked.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv);

// Path of the binary `diffmesh-<name>`: in `bin_dir` when given, else beside the running
// executable, else in the build tree layout (services/<name>/). Empty when not found.
std::string FindServiceBinary(const std::string& name, const std::string& bin_dir = "");

// Non-blocking: if `pid` has exited, reaps it, stores its wait status and returns true.
bool Exited(pid_t pid, int* status);

// SIGTERM to every live pid, then SIGKILL to those still alive after `grace`; reaps all and
// sets each pid to -1.
void StopAll(std::vector<pid_t>& pids, absl::Duration grace = absl::Seconds(10));

// A loopback TCP port that was free a moment ago (bound to port 0, then closed); 0 if none.
int FreeLoopbackPort();

// "exited with code 3" / "was killed by signal 9".
std::string DescribeExit(int status);

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_PROCESS_SUBPROCESS_H_
