// Reading a component's config.json (diffusers / transformers layout) into a config struct.
#ifndef DIFFMESH_MODELS_CORE_CONFIG_JSON_H_
#define DIFFMESH_MODELS_CORE_CONFIG_JSON_H_

#include <fstream>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models {

// Reads `key` into `out` when it is present and not null; an absent key keeps `out`, the
// reference constructor's default. A value of the wrong kind (a non-integer for an integer
// field, a non-number for a float, a non-string for a string, an unconvertible value for
// anything else) is INVALID_ARGUMENT naming `component` and the key.
template <typename T>
absl::Status ReadConfigField(const nlohmann::json& json, const char* component, const char* key,
                             T& out) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return absl::OkStatus();
  bool ok = true;
  if constexpr (std::is_same_v<T, bool>) {
    ok = it->is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    ok = it->is_number_integer();
  } else if constexpr (std::is_floating_point_v<T>) {
    ok = it->is_number();
  } else if constexpr (std::is_same_v<T, std::string>) {
    ok = it->is_string();
  }
  if (ok) {
    try {
      out = it->get<T>();
      return absl::OkStatus();
    } catch (const nlohmann::json::exception&) {
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(component, " config: bad value for '", key, "': ", it->dump()));
}

// Parses the JSON object in `path`: NOT_FOUND when it cannot be opened, INVALID_ARGUMENT when
// it is not a JSON object; both messages start with the path.
inline absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  return j;
}

}  // namespace diffmesh::models

#endif  // DIFFMESH_MODELS_CORE_CONFIG_JSON_H_
