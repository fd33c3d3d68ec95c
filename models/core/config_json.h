// Reading a component's config.json (diffusers / transformers layout) into a config struct.
#ifndef DIFFMESH_MODELS_CORE_CONFIG_JSON_H_
#define DIFFMESH_MODELS_CORE_CONFIG_JSON_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/file/file.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models {

// A config value for an error message: scalars as written, containers by kind only (dumping an
// attacker-nested array would recurse once per level).
inline std::string DescribeConfigValue(const nlohmann::json& value) {
  if (value.is_structured()) return absl::StrCat("(", value.type_name(), ")");
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 64) text = absl::StrCat(text.substr(0, 64), "...");
  return text;
}

template <typename T>
struct IsConfigList : std::false_type {};
template <typename E, typename A>
struct IsConfigList<std::vector<E, A>> : std::true_type {};

// `value` converted to T, or INVALID_ARGUMENT naming `component` and `key`: a non-integer for an
// integer field, an integer outside T's range, a non-number or a non-finite or out-of-range
// number for a float, a non-string for a string, a non-list (or a bad element) for a
// std::vector, an unconvertible value for anything else.
// Never a float-to-integer or out-of-range float conversion (both undefined behaviour).
template <typename T>
absl::StatusOr<T> ConfigValue(const nlohmann::json& value, const char* component, const char* key) {
  auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(absl::StrCat(component, " config: ", why, " for '", key,
                                                   "': ", DescribeConfigValue(value)));
  };
  if constexpr (std::is_same_v<T, bool>) {
    if (!value.is_boolean()) return bad("bad value");
    return value.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!value.is_number_integer()) return bad("not an integer");
    if (value.is_number_unsigned()) {
      const uint64_t v = value.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) return bad("out of range");
      return static_cast<T>(v);
    }
    const int64_t v = value.get<int64_t>();
    if (v < 0 ? (!std::is_signed_v<T> || v < static_cast<int64_t>(std::numeric_limits<T>::min()))
              : static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
      return bad("out of range");
    }
    return static_cast<T>(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!value.is_number()) return bad("not a number");
    const double v = value.get<double>();
    if (!std::isfinite(v) || std::fabs(v) > static_cast<double>(std::numeric_limits<T>::max())) {
      return bad("out of range");
    }
    return static_cast<T>(v);
  } else if constexpr (IsConfigList<T>::value) {
    // Element by element, so that list elements get the same range checks.
    if (!value.is_array()) return bad("not a list");
    T out;
    out.reserve(value.size());
    for (const nlohmann::json& element : value) {
      absl::StatusOr<typename T::value_type> v =
          ConfigValue<typename T::value_type>(element, component, key);
      if (!v.ok()) return v.status();
      out.push_back(*std::move(v));
    }
    return out;
  } else {
    if constexpr (std::is_same_v<T, std::string>) {
      if (!value.is_string()) return bad("not a string");
    }
    try {
      return value.get<T>();
    } catch (const nlohmann::json::exception&) {
      return bad("bad value");
    }
  }
}

// Reads `key` into `out` when it is present and not null; an absent key keeps `out`, the
// reference constructor's default. A bad value (see ConfigValue) is INVALID_ARGUMENT naming
// `component` and the key, and leaves `out` as it was.
template <typename T>
absl::Status ReadConfigField(const nlohmann::json& json, const char* component, const char* key,
                             T& out) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return absl::OkStatus();
  absl::StatusOr<T> value = ConfigValue<T>(*it, component, key);
  if (!value.ok()) return value.status();
  out = *std::move(value);
  return absl::OkStatus();
}

// Config files are kilobytes; tokenizer.json files tens of megabytes. Anything past this is the
// wrong file (or /dev/zero).
inline constexpr size_t kMaxJsonFileBytes = size_t{512} << 20;

// Parses the JSON object in `path`: NOT_FOUND when it cannot be opened, INVALID_ARGUMENT when
// it is not a JSON object, not a regular file or larger than kMaxJsonFileBytes; every message
// starts with the path.
inline absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileBounded(path, kMaxJsonFileBytes);
  if (!text.ok()) return text.status();
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  return j;
}

}  // namespace diffmesh::models

#endif  // DIFFMESH_MODELS_CORE_CONFIG_JSON_H_
