// Flag parsing for diffmesh binaries: --help lists the binary's own flags (those defined
// under services/), not Abseil's internals.
#ifndef DIFFMESH_COMMON_FLAGS_FLAGS_H_
#define DIFFMESH_COMMON_FLAGS_FLAGS_H_

#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace diffmesh {

// Flag names may be spelled with dashes (--world-size) or underscores (--world_size).
inline std::vector<char*> ParseFlags(int argc, char** argv, const char* usage) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 3 || arg[0] != '-' || arg[1] != '-') continue;
    for (char* p = argv[i] + 2; *p != '\0' && *p != '='; ++p) {
      if (*p == '-') *p = '_';
    }
  }
  absl::FlagsUsageConfig config;
  // Where the binaries' own flags are defined; common/rpc/tls_flags.cc holds the TLS flags that
  // every service shares, common/rpc/stage_token.cc the stage token flag.
  static constexpr absl::string_view kOurs[] = {"services/", "loadtest/", "common/rpc/tls_flags",
                                               "common/rpc/stage_token"};
  auto ours = [](absl::string_view file) {
    for (absl::string_view dir : kOurs) {
      if (absl::StrContains(file, dir)) return true;
    }
    return false;
  };
  config.contains_help_flags = ours;
  config.contains_helpshort_flags = ours;
  config.normalize_filename = [](absl::string_view file) {
    for (absl::string_view dir : kOurs) {
      const size_t at = file.find(dir);
      if (at != absl::string_view::npos) return std::string(file.substr(at));
    }
    return std::string(file);
  };
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(usage);
  return absl::ParseCommandLine(argc, argv);
}

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_FLAGS_FLAGS_H_
