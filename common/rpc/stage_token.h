// The stage token: stage services (AR, encoder, denoise) answer only callers that present it,
// i.e. the orchestrator, so that a stage port reached by anyone else does no work for them.
// One flag on both sides, defined once:
//   --stage-token-file FILE   a stage: the accepted tokens (one per line, # comments);
//                             the orchestrator: presents the file's first token on every call.
// Health checks and reflection stay open (probes carry no token).
#ifndef DIFFMESH_COMMON_RPC_STAGE_TOKEN_H_
#define DIFFMESH_COMMON_RPC_STAGE_TOKEN_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/rpc/token_authenticator.h"

namespace diffmesh {

// A stage's check of --stage-token-file; nullptr when the flag is empty (no check). Errors
// name the flag and the file, never a token. Call after ParseFlags.
absl::StatusOr<std::unique_ptr<TokenAuthenticator>> StageAuthenticatorFromFlags();

// The orchestrator's token to present: the first token of --stage-token-file; "" when the flag
// is empty.
absl::StatusOr<std::string> StageTokenFromFlags();

// OK when `auth` is null or the call carries one of its tokens ("authorization: Bearer <t>");
// UNAUTHENTICATED otherwise. Call first in a handler, before any work.
absl::Status CheckCallToken(const TokenAuthenticator* auth, const grpc::CallbackServerContext& ctx);

// A unary call answered at once from what the service knows (e.g. Describe): after the token
// check, `answer` fills the response; an unauthenticated call gets UNAUTHENTICATED and no
// answer. Returns the call's reactor.
grpc::ServerUnaryReactor* AnswerAtOnce(const TokenAuthenticator* auth,
                                       grpc::CallbackServerContext* ctx,
                                       const std::function<void()>& answer);

// Reactors that end a call with `status` before reading or writing anything (an
// unauthenticated call). They delete themselves.
template <typename Response>
grpc::ServerWriteReactor<Response>* RejectedWrite(const grpc::Status& status) {
  class Rejected final : public grpc::ServerWriteReactor<Response> {
   public:
    explicit Rejected(const grpc::Status& s) { this->Finish(s); }
    void OnDone() override { delete this; }
  };
  return new Rejected(status);
}

template <typename Request, typename Response>
grpc::ServerBidiReactor<Request, Response>* RejectedBidi(const grpc::Status& status) {
  class Rejected final : public grpc::ServerBidiReactor<Request, Response> {
   public:
    explicit Rejected(const grpc::Status& s) { this->Finish(s); }
    void OnDone() override { delete this; }
  };
  return new Rejected(status);
}

}  // namespace diffmesh

#endif  // DIFFMESH_COMMON_RPC_STAGE_TOKEN_H_
