// Fuzzes the model config readers (models/core/config_json.h): the input is a config.json, read
// through ReadJsonFile; every key is then read as each field type the model configs use.
// Integer and float fields must never be converted out of range (UBSan checks that), and an
// accepted value must equal the JSON value.
#include <cmath>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_input.h"
#include "models/core/config_json.h"

namespace {

using diffmesh::fuzz::Check;
using nlohmann::json;

template <typename T>
void ReadAs(const json& config, const std::string& key) {
  T out{};
  const absl::Status status = diffmesh::models::ReadConfigField(config, "fuzz", key.c_str(), out);
  const json& value = config.at(key);
  if (!status.ok()) {
    Check(status.code() == absl::StatusCode::kInvalidArgument, "error is not INVALID_ARGUMENT");
    Check(status.message().find(key) != std::string::npos || key.empty(),
          "error does not name the key");
    return;
  }
  if (value.is_null()) return;
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    Check(value.is_number_integer(), "integer field accepted a non-integer");
    if (value.is_number_unsigned()) {
      Check(static_cast<uint64_t>(out) == value.get<uint64_t>() && out >= 0, "integer changed");
    } else {
      Check(static_cast<int64_t>(out) == value.get<int64_t>(), "integer changed");
    }
  } else if constexpr (std::is_floating_point_v<T>) {
    Check(std::isfinite(out), "float field accepted a non-finite value");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static diffmesh::fuzz::MemoryFile file;
  auto config = diffmesh::models::ReadJsonFile(file.Set(data, size));
  if (!config.ok()) return 0;
  Check(config->is_object(), "ReadJsonFile returned a non-object");
  int keys = 0;
  for (auto it = config->begin(); it != config->end() && keys < 64; ++it, ++keys) {
    // The readers take keys as C strings (literals in the model configs).
    if (it.key().find('\0') != std::string::npos) continue;
    ReadAs<int>(*config, it.key());
    ReadAs<int64_t>(*config, it.key());
    ReadAs<uint32_t>(*config, it.key());
    ReadAs<bool>(*config, it.key());
    ReadAs<float>(*config, it.key());
    ReadAs<double>(*config, it.key());
    ReadAs<std::string>(*config, it.key());
    ReadAs<std::vector<int64_t>>(*config, it.key());
  }
  return 0;
}
