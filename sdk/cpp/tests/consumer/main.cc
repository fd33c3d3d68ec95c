// Builds against the installed SDK and exercises it without a server: a request message, a
// client, and the UNAVAILABLE a closed port gives after ListModels' retries.
#include <iostream>

#include "diffmesh/client.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: consumer HOST:PORT (an address nothing listens on)\n";
    return 2;
  }
  diffmesh::v1::GenerateRequest request;
  request.set_prompt("a consumer of the installed SDK");
  request.set_steps(2);
  if (request.ByteSizeLong() == 0) return 1;

  diffmesh::sdk::ClientOptions options;
  options.address = argv[1];
  auto client = diffmesh::sdk::Client::Create(options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  auto models = (*client)->ListModels(absl::Milliseconds(300));
  if (models.ok() || models.status().code() != absl::StatusCode::kUnavailable) {
    std::cerr << "expected UNAVAILABLE, got " << models.status() << "\n";
    return 1;
  }
  std::cout << "consumer ok: " << models.status().code() << "\n";
  return 0;
}
