// The LTX-2 snapshot commands shared by diffmesh-snapshot (every family's writer and checker)
// and diffmesh-ltx2-snapshot (which adds `run`): writing a built-in LTX-2 model as an
// LTX2Pipeline snapshot, and checking a snapshot. ATen-free header.
#ifndef DIFFMESH_MODELS_LTX2_TOOLS_SNAPSHOT_COMMANDS_H_
#define DIFFMESH_MODELS_LTX2_TOOLS_SNAPSHOT_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace diffmesh::models::ltx2 {

// Usage lines of the two commands (for the tools' own usage texts).
extern const char kLtx2WriteUsage[];
extern const char kLtx2CheckUsage[];

// Whether `model` names a built-in LTX-2 model (what `write --model` takes).
bool IsLtx2BuiltinModel(const std::string& model);

// `write OUT_DIR [--model NAME] [--seed N] [--dtype f32|f16|bf16] [--shards N]
// [--patch FILE.json]`, `args` after the command. INVALID_ARGUMENT for bad arguments.
absl::Status Ltx2WriteCommand(const std::vector<std::string>& args);
// `check DIR`: reads the configs and checks every component's tensors.
absl::Status Ltx2CheckCommand(const std::vector<std::string>& args);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_TOOLS_SNAPSHOT_COMMANDS_H_
