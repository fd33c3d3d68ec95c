#include "models/parallel/kv_store.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/parallel/test_ranks.h"

namespace diffmesh::models::parallel {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> B(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string S(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

KvStoreOptions Options(int port, bool serve) {
  KvStoreOptions o;
  o.port = port;
  o.serve = serve;
  o.timeout = std::chrono::seconds(5);
  return o;
}

TEST(KvStoreTest, OperationsAreSeenByEveryClient) {
  const int port = testing::FreeLoopbackPort();
  auto server = OpenKvStore(Options(port, true));
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = OpenKvStore(Options(port, false));
  ASSERT_TRUE(client.ok()) << client.status();
  c10d::Store& a = **server;
  c10d::Store& b = **client;

  a.set("k", B("v1"));
  EXPECT_EQ(S(b.get("k")), "v1");
  EXPECT_TRUE(b.check({"k"}));
  EXPECT_FALSE(b.check({"k", "missing"}));
  EXPECT_EQ(b.add("n", 3), 3);
  EXPECT_EQ(a.add("n", -5), -2);
  EXPECT_EQ(S(b.get("n")), "-2");  // counters read as decimal text, as with TCPStore
  EXPECT_EQ(a.getNumKeys(), 2);
  // compareSet: set when the value matches (or the key is missing and `expected` empty).
  EXPECT_EQ(S(b.compareSet("k", B("other"), B("v2"))), "v1");
  EXPECT_EQ(S(b.compareSet("k", B("v1"), B("v2"))), "v2");
  EXPECT_EQ(S(a.compareSet("new", B(""), B("x"))), "x");
  EXPECT_EQ(S(a.compareSet("absent", B("y"), B("z"))), "y");
  EXPECT_FALSE(a.check({"absent"}));
  EXPECT_TRUE(b.deleteKey("k"));
  EXPECT_FALSE(b.deleteKey("k"));
  EXPECT_FALSE(a.check({"k"}));
  // Values are bytes (NUL included) of any size up to the frame limit.
  std::vector<uint8_t> big(3 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 31);
  b.set("big", big);
  EXPECT_EQ(a.get("big"), big);
}

TEST(KvStoreTest, GetAndWaitBlockUntilTheKeyExistsOrTheTimeout) {
  const int port = testing::FreeLoopbackPort();
  auto server = OpenKvStore(Options(port, true));
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = OpenKvStore(Options(port, false));
  ASSERT_TRUE(client.ok()) << client.status();
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(200));
    (*server)->set("late", B("here"));
  });
  const absl::Time start = absl::Now();
  EXPECT_EQ(S((*client)->get("late")), "here");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(150));
  setter.join();

  (*client)->setTimeout(std::chrono::milliseconds(300));
  const absl::Time t0 = absl::Now();
  try {
    (*client)->get("never");
    ADD_FAILURE() << "get of a missing key returned";
  } catch (const std::exception& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("Timeout"));
    EXPECT_THAT(std::string(e.what()), HasSubstr("never"));
  }
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(300));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(3));
  EXPECT_THROW((*client)->wait({"late", "never"}, std::chrono::milliseconds(100)),
               std::exception);
  (*client)->wait({"late"}, std::chrono::milliseconds(100));
}

// The server listens on the address it is given only: bound to 127.0.0.2, it is not reachable
// on 127.0.0.1 (both loopback on Linux, different addresses).
TEST(KvStoreTest, ListensOnlyOnItsBindAddress) {
  const int port = testing::FreeLoopbackPort();
  KvStoreOptions serve = Options(port, true);
  serve.bind_host = "127.0.0.2";
  serve.host = "127.0.0.2";
  auto server = OpenKvStore(serve);
  ASSERT_TRUE(server.ok()) << server.status();
  (*server)->set("k", B("v"));

  KvStoreOptions other = Options(port, false);
  other.host = "127.0.0.1";
  other.timeout = std::chrono::milliseconds(300);
  auto refused = OpenKvStore(other);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDeadlineExceeded) << refused.status();

  other.host = "127.0.0.2";
  auto reached = OpenKvStore(other);
  ASSERT_TRUE(reached.ok()) << reached.status();
  EXPECT_EQ(S((*reached)->get("k")), "v");

  // A second server on the same address and port is refused, naming it.
  auto twice = OpenKvStore(serve);
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(twice.status().message()), HasSubstr("127.0.0.2"));
}

// A connection that sends garbage (a frame over the limit, an unknown operation) is dropped;
// the server goes on serving the others.
TEST(KvStoreTest, MalformedRequestsDropOnlyTheirConnection) {
  const int port = testing::FreeLoopbackPort();
  auto server = OpenKvStore(Options(port, true));
  ASSERT_TRUE(server.ok()) << server.status();
  for (const std::string& garbage :
       {std::string("\xff\xff\xff\xff", 4), std::string("\x01\x00\x00\x00\x63", 5),
        std::string("\x05\x00\x00\x00\x02\x09\x00\x00\x00", 9)}) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::send(fd, garbage.data(), garbage.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(garbage.size()));
    char byte;
    EXPECT_EQ(::recv(fd, &byte, 1, 0), 0) << "the connection was not closed";
    ::close(fd);
  }
  (*server)->set("still", B("serving"));
  auto client = OpenKvStore(Options(port, false));
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(S((*client)->get("still")), "serving");
}

}  // namespace
}  // namespace diffmesh::models::parallel
