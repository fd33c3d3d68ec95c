#include "models/parallel/kv_store.h"

#include <fcntl.h>
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
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace diffmesh::models::parallel {
namespace {

enum class Op : uint8_t { kSet = 1, kGet, kAdd, kCheck, kDelete, kNumKeys, kCompareSet };

// Frames: [u32 payload length][payload]; in a payload, strings are [u32 length][bytes] and
// integers 8 bytes, little-endian.
void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutI64(std::string& out, int64_t v) {
  const auto u = static_cast<uint64_t>(v);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
}
void PutStr(std::string& out, const char* data, size_t size) {
  PutU32(out, static_cast<uint32_t>(size));
  out.append(data, size);
}
void PutStr(std::string& out, const std::string& s) { PutStr(out, s.data(), s.size()); }
void PutStr(std::string& out, const std::vector<uint8_t>& b) {
  PutStr(out, reinterpret_cast<const char*>(b.data()), b.size());
}

// Reads a payload; any read past its end leaves ok() false (and returns zeros / empty).
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  explicit Reader(std::string&&) = delete;  // would read a temporary after it is gone
  bool ok() const { return ok_; }
  bool done() const { return pos_ == data_.size(); }
  uint64_t Bits(int bytes) {
    if (data_.size() - pos_ < static_cast<size_t>(bytes)) {
      ok_ = false;
      return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) {
      v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    }
    pos_ += bytes;
    return v;
  }
  uint8_t U8() { return static_cast<uint8_t>(Bits(1)); }
  uint32_t U32() { return static_cast<uint32_t>(Bits(4)); }
  int64_t I64() { return static_cast<int64_t>(Bits(8)); }
  std::string Str() {
    const uint32_t n = U32();
    if (!ok_ || data_.size() - pos_ < n) {
      ok_ = false;
      return {};
    }
    std::string s(data_.substr(pos_, n));
    pos_ += n;
    return s;
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

std::string Errno(const char* what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

std::string Frame(const std::string& payload) {
  std::string frame;
  PutU32(frame, static_cast<uint32_t>(payload.size()));
  return frame + payload;
}

// The server: one thread, every connection polled; requests are answered in arrival order.
class KvServer {
 public:
  static absl::StatusOr<std::unique_ptr<KvServer>> Listen(const std::string& host, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(port);
    if (const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0) {
      return absl::UnavailableError(absl::StrCat("rendezvous store: cannot resolve bind address '",
                                                 host, "': ", gai_strerror(rc)));
    }
    std::string why = "no address";
    int fd = -1;
    for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
      fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) {
        why = Errno("socket");
        continue;
      }
      const int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
        why = Errno("bind/listen");
        ::close(fd);
        fd = -1;
      }
    }
    freeaddrinfo(found);
    if (fd < 0) {
      return absl::UnavailableError(
          absl::StrCat("rendezvous store: cannot listen on ", host, ":", port, ": ", why));
    }
    return std::unique_ptr<KvServer>(new KvServer(fd));
  }

  ~KvServer() {
    const char stop = 1;
    while (::write(wake_[1], &stop, 1) < 0 && errno == EINTR) {
    }
    thread_.join();
    ::close(wake_[0]);
    ::close(wake_[1]);
    ::close(listen_fd_);
  }

 private:
  struct Conn {
    int fd;
    std::string in;
  };

  explicit KvServer(int listen_fd) : listen_fd_(listen_fd) {
    if (::pipe2(wake_, O_CLOEXEC) != 0) throw std::runtime_error(Errno("rendezvous store: pipe"));
    thread_ = std::thread([this] { Run(); });
  }

  void Run() {
    std::vector<Conn> conns;
    std::vector<pollfd> fds;
    while (true) {
      fds.assign({{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}});
      for (const Conn& c : conns) fds.push_back({c.fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[0].revents != 0) break;
      // Connections first: fds[2 + i] is conns[i] until conns changes.
      std::vector<bool> drop(conns.size(), false);
      for (size_t i = 0; i < conns.size(); ++i) {
        if (fds[2 + i].revents != 0) drop[i] = !Serve(conns[i]);
      }
      for (size_t i = conns.size(); i-- > 0;) {
        if (drop[i]) {
          ::close(conns[i].fd);
          conns.erase(conns.begin() + static_cast<std::ptrdiff_t>(i));
        }
      }
      if (fds[1].revents & POLLIN) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          const int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          // A client that stops reading must not hold the server: its answer gives up.
          timeval limit{5, 0};
          setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
          conns.push_back({fd, {}});
        }
      }
    }
    for (const Conn& c : conns) ::close(c.fd);
  }

  // Reads what arrived and answers every whole frame; false: drop the connection.
  bool Serve(Conn& c) {
    char buf[64 << 10];
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0) return false;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c.in.append(buf, static_cast<size_t>(n));
    size_t at = 0;
    while (c.in.size() - at >= 4) {
      Reader header(std::string_view(c.in).substr(at, 4));
      const uint32_t length = header.U32();
      if (length > kMaxKvFrameBytes) return false;
      if (c.in.size() - at - 4 < length) break;
      std::string answer;
      if (!Handle(std::string_view(c.in).substr(at + 4, length), answer)) return false;
      if (!SendAll(c.fd, Frame(answer))) return false;
      at += 4 + length;
    }
    c.in.erase(0, at);
    return true;
  }

  // One request; false: malformed (the connection is dropped).
  bool Handle(std::string_view payload, std::string& answer) {
    Reader r(payload);
    const auto op = static_cast<Op>(r.U8());
    switch (op) {
      case Op::kSet: {
        std::string key = r.Str(), value = r.Str();
        if (!r.ok() || !r.done()) return false;
        data_[std::move(key)] = std::move(value);
        return true;
      }
      case Op::kGet: {
        const std::string key = r.Str();
        if (!r.ok() || !r.done()) return false;
        auto it = data_.find(key);
        answer.push_back(it != data_.end() ? 1 : 0);
        if (it != data_.end()) PutStr(answer, it->second);
        return true;
      }
      case Op::kAdd: {
        const std::string key = r.Str();
        const int64_t delta = r.I64();
        if (!r.ok() || !r.done()) return false;
        // Counters are stored as decimal text, as TCPStore keeps them (a get reads the number).
        int64_t value = 0;
        auto it = data_.find(key);
        if (it != data_.end() && !absl::SimpleAtoi(it->second, &value)) value = 0;
        value = static_cast<int64_t>(static_cast<uint64_t>(value) + static_cast<uint64_t>(delta));
        data_[key] = std::to_string(value);
        PutI64(answer, value);
        return true;
      }
      case Op::kCheck: {
        const uint32_t count = r.U32();
        bool all = true;
        for (uint32_t i = 0; i < count && r.ok(); ++i) all &= data_.count(r.Str()) > 0;
        if (!r.ok() || !r.done()) return false;
        answer.push_back(all ? 1 : 0);
        return true;
      }
      case Op::kDelete: {
        const std::string key = r.Str();
        if (!r.ok() || !r.done()) return false;
        answer.push_back(data_.erase(key) > 0 ? 1 : 0);
        return true;
      }
      case Op::kNumKeys:
        if (!r.ok() || !r.done()) return false;
        PutI64(answer, static_cast<int64_t>(data_.size()));
        return true;
      case Op::kCompareSet: {
        std::string key = r.Str(), expected = r.Str(), desired = r.Str();
        if (!r.ok() || !r.done()) return false;
        // TCPStore's rule: a missing key is set when `expected` is empty; the answer is the
        // value the key has afterwards (or `expected` for a missing key left alone).
        auto it = data_.find(key);
        if (it == data_.end()) {
          if (expected.empty()) {
            data_[std::move(key)] = desired;
            PutStr(answer, desired);
          } else {
            PutStr(answer, expected);
          }
        } else if (it->second == expected) {
          it->second = desired;
          PutStr(answer, desired);
        } else {
          PutStr(answer, it->second);
        }
        return true;
      }
    }
    return false;
  }

  const int listen_fd_;
  int wake_[2] = {-1, -1};
  std::thread thread_;
  std::unordered_map<std::string, std::string> data_;  // the server thread's alone
};

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
    PutStr(req, value);
    Call(req);
  }

  std::vector<uint8_t> compareSet(const std::string& key, const std::vector<uint8_t>& expected,
                                  const std::vector<uint8_t>& desired) override {
    std::string req(1, static_cast<char>(Op::kCompareSet));
    PutStr(req, key);
    PutStr(req, expected);
    PutStr(req, desired);
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
    if (!SendAll(fd_, Frame(request))) Fail(Errno("send"));
    std::string header = ReadExactly(4);
    Reader h(header);
    const uint32_t length = h.U32();
    if (length > kMaxKvFrameBytes) Fail("answer too large");
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
