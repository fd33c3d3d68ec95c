#include "models/core/weights.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"

namespace diffmesh::models {
namespace {

uint64_t Fnv1a(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ULL ^ seed;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

}  // namespace

at::ScalarType ToScalarType(DType d) {
  switch (d) {
    case DType::kFloat32: return at::kFloat;
    case DType::kFloat16: return at::kHalf;
    case DType::kBFloat16: return at::kBFloat16;
    case DType::kInt64: return at::kLong;
    case DType::kInt32: return at::kInt;
    case DType::kUInt8: return at::kByte;
    case DType::kFloat64: return at::kDouble;
    case DType::kInt8: return at::kChar;
    case DType::kBool: return at::kBool;
    case DType::kInt16: return at::kShort;
  }
  return at::kFloat;
}

std::optional<DType> FromScalarType(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kLong: return DType::kInt64;
    case at::kInt: return DType::kInt32;
    case at::kByte: return DType::kUInt8;
    case at::kDouble: return DType::kFloat64;
    case at::kChar: return DType::kInt8;
    case at::kBool: return DType::kBool;
    case at::kShort: return DType::kInt16;
    default: return std::nullopt;
  }
}

void AddLinear(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out,
               bool bias) {
  specs.push_back({prefix + ".weight", {out, in}, Init::kNormal, 0.02f});
  if (bias) specs.push_back({prefix + ".bias", {out}, Init::kZeros, 0.0f});
}

WeightMap InitSeeded(const std::vector<ParamSpec>& specs, uint64_t seed) {
  WeightMap out;
  for (const ParamSpec& s : specs) {
    at::Tensor t;
    switch (s.init) {
      case Init::kOnes: t = at::ones(s.shape, at::kFloat); break;
      case Init::kZeros: t = at::zeros(s.shape, at::kFloat); break;
      case Init::kNormal: {
        auto gen = at::detail::createCPUGenerator(Fnv1a(s.name, seed));
        t = at::normal(0.0, s.std, s.shape, gen, at::TensorOptions().dtype(at::kFloat));
        break;
      }
    }
    out.emplace(s.name, std::move(t));
  }
  return out;
}

at::Tensor ToTensor(const TensorView& view) {
  auto t = at::empty(view.shape, at::TensorOptions().dtype(ToScalarType(view.dtype)));
  std::memcpy(t.data_ptr(), view.data, view.nbytes);
  return t;
}

absl::StatusOr<WeightMap> LoadWeights(const Checkpoint& checkpoint,
                                      const std::vector<ParamSpec>& specs, at::ScalarType dtype,
                                      const std::vector<std::string>& ignored_prefixes) {
  WeightMap out;
  std::set<std::string> expected;
  for (const ParamSpec& s : specs) {
    expected.insert(s.name);
    const TensorView* v = checkpoint.Find(s.name);
    if (v == nullptr) {
      return absl::NotFoundError(absl::StrCat("checkpoint (", absl::StrJoin(checkpoint.files(), ", "),
                                              ") lacks parameter '", s.name, "'"));
    }
    if (v->shape != s.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter '", s.name, "' in ", *v->file, " has shape ", ShapeString(v->shape),
                       ", expected ", ShapeString(s.shape)));
    }
    at::Tensor t = ToTensor(*v);
    if (t.is_floating_point()) t = t.to(dtype);
    out.emplace(s.name, std::move(t));
  }
  for (const auto& [name, view] : checkpoint.tensors()) {
    if (expected.count(name)) continue;
    bool ignored = false;
    for (const auto& p : ignored_prefixes) ignored = ignored || absl::StartsWith(name, p);
    if (!ignored) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected parameter '", name, "' in ", *view->file));
    }
  }
  return out;
}

absl::Status CheckWeights(const WeightMap& weights, const std::vector<ParamSpec>& specs) {
  for (const ParamSpec& s : specs) {
    auto it = weights.find(s.name);
    if (it == weights.end()) return absl::NotFoundError(absl::StrCat("missing parameter '", s.name, "'"));
    if (it->second.sizes() != at::IntArrayRef(s.shape)) {
      return absl::InvalidArgumentError(absl::StrCat("parameter '", s.name, "' has shape ",
                                                     ShapeString(it->second.sizes()), ", expected ",
                                                     ShapeString(s.shape)));
    }
  }
  if (weights.size() != specs.size()) {
    std::set<std::string> names;
    for (const auto& s : specs) names.insert(s.name);
    for (const auto& [name, t] : weights) {
      if (!names.count(name)) return absl::InvalidArgumentError(absl::StrCat("unexpected parameter '", name, "'"));
    }
  }
  return absl::OkStatus();
}

const at::Tensor& Get(const WeightMap& weights, const std::string& name) {
  auto it = weights.find(name);
  TORCH_CHECK(it != weights.end(), "missing parameter '", name, "'");
  return it->second;
}

}  // namespace diffmesh::models
