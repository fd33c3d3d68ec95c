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
  auto ours = [](absl::string_view file) {
    return absl::StrContains(file, "services/") || absl::StrContains(file, "loadtest/");
  };
  config.contains_help_flags = ours;
  config.contains_helpshort_flags = ours;
  config.normalize_filename = [](absl::string_view file) {
    size_t at = file.find("services/");
    if (at == absl::string_view::npos) at = file.find("loadtest/");
    return std::string(at == absl::string_view::npos ? file : file.substr(at));
  };
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(usage);
  return absl::ParseCommandLine(argc, argv);
}

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_FLAGS_FLAGS_H_
