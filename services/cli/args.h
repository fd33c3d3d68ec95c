// Command-line parsing for the `diffmesh` CLI: a subcommand, then --flag value / --flag=value
// pairs, checked against the subcommand's declared flags.
#ifndef DIFFMESH_SERVICES_CLI_ARGS_H_
#define DIFFMESH_SERVICES_CLI_ARGS_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh::cli {

struct FlagSpec {
  std::string name;       // without dashes, e.g. "negative-prompt"
  std::string value_name; // empty for a boolean switch
  std::string help;
};

class Args {
 public:
  // Parses argv[first..] against `specs`. Unknown flags and missing values are errors.
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv,
                                    const std::vector<FlagSpec>& specs);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  // INVALID_ARGUMENT naming the flag when the value is not an integer / number.
  absl::StatusOr<std::optional<int64_t>> GetInt(const std::string& name) const;
  absl::StatusOr<std::optional<double>> GetDouble(const std::string& name) const;

 private:
  std::map<std::string, std::string> values_;
};

// "  --name VALUE   help" lines.
std::string FlagHelp(const std::vector<FlagSpec>& specs);

}  // namespace diffmesh::cli

#endif  // DIFFMESH_SERVICES_CLI_ARGS_H_
