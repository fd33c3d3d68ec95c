// Fuzzes the pipeline config parser through its one entry point, PipelineConfig::Parse
// (its internals are free to change): any input is an error or a config, never a crash.
#include <cstdint>
#include <string>

#include "common/config/pipeline_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = diffmesh::PipelineConfig::Parse(text);
  (void)config;
  return 0;
}
