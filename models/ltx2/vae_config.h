// Config readers shared by the video VAE's decoder (video_vae.cc) and encoder
// (video_vae_encoder.cc); no ATen.
#ifndef DIFFMESH_MODELS_LTX2_VAE_CONFIG_H_
#define DIFFMESH_MODELS_LTX2_VAE_CONFIG_H_

#include <algorithm>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

// A config entry that may be one bool (repeated `count` times, as the reference does) or a list;
// absent or null leaves `out` as it is. Errors name `component` and the key.
inline absl::Status ReadBoolOrList(const nlohmann::json& json, const char* component,
                                   const char* key, size_t count, std::vector<bool>& out) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return absl::OkStatus();
  if (it->is_boolean()) {
    out.assign(count, it->get<bool>());
    return absl::OkStatus();
  }
  if (it->is_array() &&
      std::all_of(it->begin(), it->end(), [](const auto& v) { return v.is_boolean(); })) {
    out.clear();
    for (const auto& v : *it) out.push_back(v.get<bool>());
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(component, " config: bad value for '", key, "': ", it->dump()));
}

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_VAE_CONFIG_H_
