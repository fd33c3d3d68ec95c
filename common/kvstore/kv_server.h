// The server side of the denoise group's rendezvous store (models/parallel/kv_store.h), and the
// wire format both sides speak. No LibTorch: the request handler is fuzzed on its own.
//
// Frames: [u32 payload length][payload], little-endian; a payload is an operation byte and its
// arguments, strings as [u32 length][bytes], integers 8 bytes. Answers are frames too.
#ifndef DIFFMESH_COMMON_KVSTORE_KV_SERVER_H_
#define DIFFMESH_COMMON_KVSTORE_KV_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"

namespace diffmesh::kvstore {

// A frame longer than this ends its connection.
inline constexpr uint32_t kMaxFrameBytes = 64u << 20;

enum class Op : uint8_t { kSet = 1, kGet, kAdd, kCheck, kDelete, kNumKeys, kCompareSet };

void PutU32(std::string& out, uint32_t v);
void PutI64(std::string& out, int64_t v);
void PutStr(std::string& out, std::string_view s);
// [u32 length][payload].
std::string Frame(const std::string& payload);

// Hands each whole frame at the front of `buffer` to `on_payload`, in order. Returns the bytes
// those frames took (a partial frame at the end waits for more data), or nullopt when a frame's
// length is over kMaxFrameBytes or `on_payload` returned false: drop the connection.
std::optional<size_t> ForEachFrame(std::string_view buffer,
                                   const std::function<bool(std::string_view)>& on_payload);

// Reads a payload; any read past its end leaves ok() false (and returns zeros / empty).
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  explicit Reader(std::string&&) = delete;  // would read a temporary after it is gone
  bool ok() const { return ok_; }
  bool done() const { return pos_ == data_.size(); }
  uint8_t U8() { return static_cast<uint8_t>(Bits(1)); }
  uint32_t U32() { return static_cast<uint32_t>(Bits(4)); }
  int64_t I64() { return static_cast<int64_t>(Bits(8)); }
  std::string Str();

 private:
  uint64_t Bits(int bytes);

  std::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// The store's keys and values, and the handling of one request.
class KvTable {
 public:
  // Applies the request in `payload` and writes the answer's payload (possibly empty) to
  // `answer`; false for a malformed request (its connection is then dropped).
  bool Handle(std::string_view payload, std::string& answer);
  size_t size() const { return data_.size(); }

 private:
  std::unordered_map<std::string, std::string> data_;
};

// A TCP server of a KvTable: one thread polls the listening socket and every connection and
// answers requests in arrival order.
class KvServer {
 public:
  // Listens on host:port ("0.0.0.0" / "::": every interface); UNAVAILABLE naming the address
  // when it cannot.
  static absl::StatusOr<std::unique_ptr<KvServer>> Listen(const std::string& host, int port);
  ~KvServer();
  KvServer(const KvServer&) = delete;
  KvServer& operator=(const KvServer&) = delete;

 private:
  struct Conn {
    int fd;
    std::string in;
  };
  explicit KvServer(int listen_fd);
  void Run();
  bool Serve(Conn& c);  // false: drop the connection

  const int listen_fd_;
  int wake_[2] = {-1, -1};
  KvTable table_;  // the server thread's alone
  std::thread thread_;
};

}  // namespace diffmesh::kvstore

#endif  // DIFFMESH_COMMON_KVSTORE_KV_SERVER_H_
