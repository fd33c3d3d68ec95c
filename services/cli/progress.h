// Renders GenerateEvents for people: a redrawn progress line on a terminal, plain lines
// otherwise (logs, pipes, CI).
#ifndef DIFFMESH_SERVICES_CLI_PROGRESS_H_
#define DIFFMESH_SERVICES_CLI_PROGRESS_H_

#include <cstdio>
#include <map>
#include <string>

#include "diffmesh/v1/generation.pb.h"

namespace diffmesh::cli {

class ProgressPrinter {
 public:
  // Writes to `out`; `tty` chooses the redrawn bar over plain lines.
  ProgressPrinter(FILE* out, bool tty) : out_(out), tty_(tty) {}
  ~ProgressPrinter() { EndLine(); }
  void OnEvent(const v1::GenerateEvent& e);

 private:
  void Bar(const char* what, int done, int total, const char* unit);
  void EndLine();
  FILE* out_;
  bool tty_;
  bool open_line_ = false;
  std::map<std::string, int> last_line_;  // per stage: the tenth of its work last printed
};

}  // namespace diffmesh::cli

#endif  // DIFFMESH_SERVICES_CLI_PROGRESS_H_
