// Helpers for the libFuzzer harnesses: fuzz input presented as a file (readers take paths) and
// invariant checks that abort, so that a wrong answer is a finding just like a crash.
#ifndef DIFFMESH_FUZZ_FUZZ_INPUT_H_
#define DIFFMESH_FUZZ_FUZZ_INPUT_H_

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace diffmesh::fuzz {

// An in-memory regular file (memfd) whose path, /proc/self/fd/N, readers can open; each Set
// replaces its content. One per harness process.
class MemoryFile {
 public:
  MemoryFile() : fd_(memfd_create("diffmesh-fuzz", MFD_CLOEXEC)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& Set(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0 ||
        (size > 0 && pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size))) {
      std::perror("memfd write");
      std::abort();
    }
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

// Aborts with `what` when an invariant of a reader's answer does not hold.
inline void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

}  // namespace diffmesh::fuzz

#endif  // DIFFMESH_FUZZ_FUZZ_INPUT_H_
