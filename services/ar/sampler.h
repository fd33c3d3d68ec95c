// Token sampling for the AR stage: temperature, top-k and top-p over the image-token range,
// each row with its own generator so a request's draws do not depend on its batch.
#ifndef DIFFMESH_SERVICES_AR_SAMPLER_H_
#define DIFFMESH_SERVICES_AR_SAMPLER_H_

#include <ATen/ATen.h>

#include <vector>

#include "models/glm_image/ar_prompt.h"

namespace diffmesh {

// logits [B, V] → token ids [B] int64 in [0, allowed), row i drawn with generators[i].
at::Tensor SampleTokens(const at::Tensor& logits, int64_t allowed,
                        const models::glm_image::ArSampling& sampling,
                        const std::vector<at::Generator*>& generators);

}  // namespace diffmesh

#endif  // DIFFMESH_SERVICES_AR_SAMPLER_H_
