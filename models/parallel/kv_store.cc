#include "models/parallel/kv_store.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/kvstore/kv_server.h"
#include "common/net/tcp.h"

namespace diffmesh::models::parallel {
namespace {

using kvstore::Frame;
using kvstore::KvServer;
using kvstore::Op;
using kvstore::PutI64;
using kvstore::PutStr;
using kvstore::PutU32;
using kvstore::Reader;

std::string Errno(const char* what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

std::string_view View(const std::vector<uint8_t>& b) {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

std::vector<uint8_t> ToBytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

// Connects to host:port, retrying until `until` (the server may start later).
absl::StatusOr<int> Dial(const std::string& host, int port, absl::Time until) {
  const std::string service = std::to_string(port);
  std::string why;
  absl::Duration pause = absl::Milliseconds(10);
  while (true) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* found = nullptr;
    if (const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0) {
      why = absl::StrCat("cannot resolve: ", gai_strerror(rc));
    } else {
      for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
          freeaddrinfo(found);
          const int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          return fd;
        }
        why = Errno("connect");
        ::close(fd);
      }
      freeaddrinfo(found);
    }
    if (absl::Now() + pause > until) {
      return absl::DeadlineExceededError(absl::StrCat("rendezvous store at ", host, ":", port,
                                                      ": Timeout connecting (", why, ")"));
    }
    absl::SleepFor(pause);
    pause = std::min(pause * 2, absl::Milliseconds(200));
  }
}

class KvStore final : public c10d::Store {
 public:
  KvStore(std::string host, int port, std::chrono::milliseconds timeout, int fd,
          std::shared_ptr<KvServer> server)
      : c10d::Store(timeout), host_(std::move(host)), port_(port), fd_(fd),
        server_(std::move(server)) {}
  ~KvStore() override { ::close(fd_); }

  // LibTorch 2.x: a store usable from another thread, over the same server (a new connection).
  // Not an override in 1.13, which has no clone().
  c10::intrusive_ptr<c10d::Store> clone() {
    auto fd = Dial(host_, port_, absl::Now() + absl::FromChrono(timeout_));
    if (!fd.ok()) throw std::runtime_error(std::string(fd.status().message()));
    return c10::make_intrusive<KvStore>(host_, port_, timeout_, *fd, server_);
  }

  void set(const std::string& key, const std::vector<uint8_t>& value) override {
    std::string req(1, static_cast<char>(Op::kSet));
    PutStr(req, key);
    PutStr(req, View(value));
    Call(req);
  }

  std::vector<uint8_t> compareSet(const std::string& key, const std::vector<uint8_t>& expected,
                                  const std::vector<uint8_t>& desired) override {
    std::string req(1, static_cast<char>(Op::kCompareSet));
    PutStr(req, key);
    PutStr(req, View(expected));
    PutStr(req, View(desired));
    const std::string answer = Call(req);
    Reader r(answer);
    std::string value = r.Str();
    Expect(r, "compareSet");
    return ToBytes(value);
  }

  std::vector<uint8_t> get(const std::string& key) override {
    std::vector<uint8_t> value;
    Poll({key}, timeout_, [&] { return TryGet(key, value); });
    return value;
  }

  int64_t add(const std::string& key, int64_t delta) override {
    std::string req(1, static_cast<char>(Op::kAdd));
    PutStr(req, key);
    PutI64(req, delta);
    const std::string answer = Call(req);
    Reader r(answer);
    const int64_t value = r.I64();
    Expect(r, "add");
    return value;
  }

  bool deleteKey(const std::string& key) override {
    std::string req(1, static_cast<char>(Op::kDelete));
    PutStr(req, key);
    const std::string answer = Call(req);
    Reader r(answer);
    const bool deleted = r.U8() != 0;
    Expect(r, "deleteKey");
    return deleted;
  }

  bool check(const std::vector<std::string>& keys) override {
    std::string req(1, static_cast<char>(Op::kCheck));
    PutU32(req, static_cast<uint32_t>(keys.size()));
    for (const std::string& k : keys) PutStr(req, k);
    const std::string answer = Call(req);
    Reader r(answer);
    const bool all = r.U8() != 0;
    Expect(r, "check");
    return all;
  }

  int64_t getNumKeys() override {
    const std::string answer = Call(std::string(1, static_cast<char>(Op::kNumKeys)));
    Reader r(answer);
    const int64_t n = r.I64();
    Expect(r, "getNumKeys");
    return n;
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }

  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    Poll(keys, timeout, [&] { return check(keys); });
  }

 private:
  bool TryGet(const std::string& key, std::vector<uint8_t>& value) {
    std::string req(1, static_cast<char>(Op::kGet));
    PutStr(req, key);
    const std::string answer = Call(req);
    Reader r(answer);
    const bool found = r.U8() != 0;
    std::string bytes = found ? r.Str() : std::string();
    Expect(r, "get");
    if (found) value = ToBytes(bytes);
    return found;
  }

  // Repeats `ready` with a growing pause until it holds or `timeout` (zero: none) ends.
  template <typename Ready>
  void Poll(const std::vector<std::string>& keys, std::chrono::milliseconds timeout, Ready ready) {
    const absl::Time until = timeout.count() > 0 ? absl::Now() + absl::FromChrono(timeout)
                                                 : absl::InfiniteFuture();
    absl::Duration pause = absl::Microseconds(200);
    while (!ready()) {
      if (absl::Now() >= until) {
        std::string names;
        for (const std::string& k : keys) absl::StrAppend(&names, names.empty() ? "" : ", ", k);
        throw std::runtime_error(absl::StrCat("rendezvous store at ", host_, ":", port_,
                                              ": Timeout after ", timeout.count(),
                                              " ms waiting for key(s) ", names));
      }
      absl::SleepFor(pause);
      pause = std::min(pause * 2, absl::Milliseconds(20));
    }
  }

  void Expect(const Reader& r, const char* op) const {
    if (!r.ok() || !r.done()) Fail(absl::StrCat("malformed answer to ", op));
  }

  [[noreturn]] void Fail(const std::string& why) const {
    throw std::runtime_error(absl::StrCat("rendezvous store at ", host_, ":", port_, ": ", why));
  }

  // Sends one request and returns its answer's payload; throws on a broken connection or when
  // no answer comes within the timeout.
  std::string Call(const std::string& request) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!net::SendAll(fd_, Frame(request))) Fail(Errno("send"));
    std::string header = ReadExactly(4);
    Reader h(header);
    const uint32_t length = h.U32();
    if (length > kvstore::kMaxFrameBytes) Fail("answer too large");
    return ReadExactly(length);
  }

  std::string ReadExactly(size_t n) {
    std::string out(n, '\0');
    size_t got = 0;
    const int limit_ms = timeout_.count() > 0 ? static_cast<int>(std::min<int64_t>(
                                                    timeout_.count(), INT32_MAX))
                                              : -1;
    while (got < n) {
      pollfd p{fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, limit_ms);
      if (ready < 0 && errno == EINTR) continue;
      if (ready == 0) Fail("Timeout waiting for the server's answer");
      if (ready < 0) Fail(Errno("poll"));
      const ssize_t r = ::recv(fd_, out.data() + got, n - got, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) Fail("the server closed the connection");
      if (r < 0) Fail(Errno("recv"));
      got += static_cast<size_t>(r);
    }
    return out;
  }

  const std::string host_;
  const int port_;
  const int fd_;
  const std::shared_ptr<KvServer> server_;  // the serving store's own; shared with its clones
  std::mutex mu_;
};

}  // namespace

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> OpenKvStore(const KvStoreOptions& options) {
  if (options.port < 1 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous store port ", options.port, " out of range [1, 65535]"));
  }
  std::shared_ptr<KvServer> server;
  if (options.serve) {
    auto listening = KvServer::Listen(options.bind_host, options.port);
    if (!listening.ok()) return listening.status();
    server = std::move(*listening);
  }
  auto fd = Dial(options.host, options.port, absl::Now() + absl::FromChrono(options.timeout));
  if (!fd.ok()) return fd.status();
  return c10::intrusive_ptr<c10d::Store>(
      c10::make_intrusive<KvStore>(options.host, options.port, options.timeout, *fd, server));
}

}  // namespace diffmesh::models::parallel
