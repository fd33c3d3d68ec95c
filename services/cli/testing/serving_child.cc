// A tiny stand-in for a service under `diffmesh up`'s supervisor tests: listens on
// 127.0.0.1:<port> (argv[1]) and answers every connection with "ok <pid>\n" until killed.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <port>\n", argv[0]);
    return 2;
  }
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[1])));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 16) != 0) {
    std::perror("serving_child: bind/listen");
    return 1;
  }
  const std::string reply = "ok " + std::to_string(getpid()) + "\n";
  while (true) {
    const int conn = accept(fd, nullptr, nullptr);
    if (conn < 0) continue;
    (void)!write(conn, reply.data(), reply.size());
    close(conn);
  }
}
