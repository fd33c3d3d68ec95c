// Test access to the reference fixtures (../shared/fixtures, or $DIFFMESH_FIXTURES).
#ifndef DIFFMESH_MODELS_CORE_FIXTURES_H_
#define DIFFMESH_MODELS_CORE_FIXTURES_H_

#include <cstdlib>
#include <string>

namespace diffmesh::models {

// Path of `relative` under the fixture root, e.g. "glm-image-ref-a/transformer".
inline std::string FixturePath(const std::string& relative) {
  const char* root = std::getenv("DIFFMESH_FIXTURES");
  return std::string(root != nullptr ? root : "../shared/fixtures") + "/" + relative;
}

}  // namespace diffmesh::models

#endif  // DIFFMESH_MODELS_CORE_FIXTURES_H_
