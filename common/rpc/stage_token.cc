#include "common/rpc/stage_token.h"

#include "common/status/grpc_status.h"

#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/rpc/token_file.h"

ABSL_FLAG(std::string, stage_token_file, "",
          "Stage token file (one token per line, blank lines and # comments skipped). A stage "
          "service answers only calls that carry one of its tokens (metadata 'authorization: "
          "Bearer <token>'; health stays open); the orchestrator presents the file's first "
          "token on every stage call. Empty: no stage token.");

namespace diffmesh {

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> StageAuthenticatorFromFlags() {
  const std::string path = absl::GetFlag(FLAGS_stage_token_file);
  if (path.empty()) return nullptr;
  auto auth = TokenAuthenticator::FromFile(path, "stage token");
  if (!auth.ok()) {
    return absl::Status(auth.status().code(),
                        absl::StrCat("--stage-token-file: ", auth.status().message()));
  }
  return auth;
}

absl::StatusOr<std::string> StageTokenFromFlags() {
  const std::string path = absl::GetFlag(FLAGS_stage_token_file);
  if (path.empty()) return std::string();
  auto tokens = ReadTokenFile(path);
  if (!tokens.ok()) {
    return absl::Status(tokens.status().code(),
                        absl::StrCat("--stage-token-file: ", tokens.status().message()));
  }
  return tokens->front();
}

absl::Status CheckCallToken(const TokenAuthenticator* auth,
                            const grpc::CallbackServerContext& ctx) {
  if (auth == nullptr) return absl::OkStatus();
  std::vector<absl::string_view> values;
  auto [begin, end] = ctx.client_metadata().equal_range("authorization");
  for (auto it = begin; it != end; ++it) values.emplace_back(it->second.data(), it->second.size());
  return auth->Check(values);
}

grpc::ServerUnaryReactor* AnswerAtOnce(const TokenAuthenticator* auth,
                                       grpc::CallbackServerContext* ctx,
                                       const std::function<void()>& answer) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (absl::Status s = CheckCallToken(auth, *ctx); !s.ok()) {
    reactor->Finish(ToGrpcStatus(s));
    return reactor;
  }
  answer();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace diffmesh
