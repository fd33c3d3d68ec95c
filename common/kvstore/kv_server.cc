#include "common/kvstore/kv_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/net/tcp.h"

namespace diffmesh::kvstore {

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void PutI64(std::string& out, int64_t v) {
  const auto u = static_cast<uint64_t>(v);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
}

void PutStr(std::string& out, std::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out.append(s.data(), s.size());
}

std::string Frame(const std::string& payload) {
  std::string frame;
  PutU32(frame, static_cast<uint32_t>(payload.size()));
  return frame + payload;
}

std::optional<size_t> ForEachFrame(std::string_view buffer,
                                   const std::function<bool(std::string_view)>& on_payload) {
  size_t at = 0;
  while (buffer.size() - at >= 4) {
    Reader header(buffer.substr(at, 4));
    const uint32_t length = header.U32();
    if (length > kMaxFrameBytes) return std::nullopt;
    if (buffer.size() - at - 4 < length) break;
    if (!on_payload(buffer.substr(at + 4, length))) return std::nullopt;
    at += 4 + length;
  }
  return at;
}

uint64_t Reader::Bits(int bytes) {
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

std::string Reader::Str() {
  const uint32_t n = U32();
  if (!ok_ || data_.size() - pos_ < n) {
    ok_ = false;
    return {};
  }
  std::string s(data_.substr(pos_, n));
  pos_ += n;
  return s;
}

bool KvTable::Handle(std::string_view payload, std::string& answer) {
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

absl::StatusOr<std::unique_ptr<KvServer>> KvServer::Listen(const std::string& host, int port) {
  absl::StatusOr<int> fd = net::ListenTcp(host, port, /*backlog=*/128);
  if (!fd.ok()) {
    return absl::UnavailableError(
        fd.status().code() == absl::StatusCode::kInvalidArgument
            ? absl::StrCat("rendezvous store: cannot resolve bind address '", host, "': ",
                           fd.status().message())
            : absl::StrCat("rendezvous store: cannot listen on ", host, ":", port, ": ",
                           fd.status().message()));
  }
  return std::unique_ptr<KvServer>(new KvServer(*fd));
}

KvServer::KvServer(int listen_fd) : listen_fd_(listen_fd) {
  if (::pipe2(wake_, O_CLOEXEC) != 0) {
    throw std::runtime_error(absl::StrCat("rendezvous store: pipe: ", std::strerror(errno)));
  }
  thread_ = std::thread([this] { Run(); });
}

KvServer::~KvServer() {
  const char stop = 1;
  while (::write(wake_[1], &stop, 1) < 0 && errno == EINTR) {
  }
  thread_.join();
  ::close(wake_[0]);
  ::close(wake_[1]);
  ::close(listen_fd_);
}

void KvServer::Run() {
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

bool KvServer::Serve(Conn& c) {
  char buf[64 << 10];
  const ssize_t n = ::recv(c.fd, buf, sizeof(buf), MSG_DONTWAIT);
  if (n == 0) return false;
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  c.in.append(buf, static_cast<size_t>(n));
  const std::optional<size_t> used = ForEachFrame(c.in, [&](std::string_view payload) {
    std::string answer;
    return table_.Handle(payload, answer) && net::SendAll(c.fd, Frame(answer));
  });
  if (!used) return false;
  c.in.erase(0, *used);
  return true;
}

}  // namespace diffmesh::kvstore
