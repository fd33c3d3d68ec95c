// Test helper: the inputs of a whole DenoiseRequest as the orchestrator streams them to
// DenoiseService.DenoiseStream.
#ifndef DIFFMESH_SERVICES_DENOISE_TESTING_STREAMED_INPUTS_H_
#define DIFFMESH_SERVICES_DENOISE_TESTING_STREAMED_INPUTS_H_

#include <algorithm>
#include <vector>

#include "diffmesh/v1/stages.pb.h"

namespace diffmesh::testing {

// The inputs of `whole` as the orchestrator streams them: the request without its tensors,
// then AR chunks of `chunk` tokens (a 16×16 preview grid, the target grid, the end token) with
// the encoder's output after the first chunk.
inline std::vector<v1::DenoiseInput> StreamedInputsOf(const v1::DenoiseRequest& whole, int chunk) {
  std::vector<v1::DenoiseInput> out;
  v1::DenoiseInput head;
  *head.mutable_request() = whole;
  head.mutable_request()->clear_prior_tokens();
  head.mutable_request()->clear_prompt_embeds();
  head.mutable_request()->clear_negative_prompt_embeds();
  out.push_back(head);
  const auto* grid = reinterpret_cast<const int64_t*>(whole.prior_tokens().data().data());
  const int n = static_cast<int>(whole.prior_tokens().data().size() / 8);
  std::vector<int32_t> tokens(256, 9);  // preview grid (dropped)
  for (int i = 0; i < n; ++i) tokens.push_back(static_cast<int32_t>(grid[i]));
  tokens.push_back(257);  // the end token
  for (int offset = 0; offset < static_cast<int>(tokens.size()); offset += chunk) {
    v1::DenoiseInput in;
    v1::ArTokenChunk* c = in.mutable_ar_tokens();
    c->set_offset(offset);
    c->set_total(static_cast<int32_t>(tokens.size()));
    if (offset == 0) {  // where the AR stage says its grid lies
      c->mutable_grid()->set_height(static_cast<int32_t>(whole.prior_tokens().shape(0)));
      c->mutable_grid()->set_width(static_cast<int32_t>(whole.prior_tokens().shape(1)));
      c->mutable_grid()->set_offset(256);
    }
    for (int i = offset; i < std::min<int>(offset + chunk, tokens.size()); ++i) c->add_tokens(tokens[i]);
    out.push_back(in);
    if (offset == 0) {
      v1::DenoiseInput e;
      *e.mutable_embeddings()->mutable_prompt_embeds() = whole.prompt_embeds();
      *e.mutable_embeddings()->mutable_negative_prompt_embeds() = whole.negative_prompt_embeds();
      out.push_back(e);
    }
  }
  return out;
}

}  // namespace diffmesh::testing

#endif  // DIFFMESH_SERVICES_DENOISE_TESTING_STREAMED_INPUTS_H_
