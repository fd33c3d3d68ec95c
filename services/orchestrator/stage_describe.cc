#include "services/orchestrator/stage_describe.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "diffmesh/v1/stages.grpc.pb.h"

namespace diffmesh {
namespace {

absl::Status Mismatch(const PipelineModel& m, const StageSpec& s, const std::string& what) {
  return absl::FailedPreconditionError(
      absl::StrCat("pipeline config disagrees with the stage "
                   "services: model '",
                   m.name, "', stage '", s.name, "' (service '", s.service, "'): ", what));
}

const v1::ServedModel* FindServed(const v1::StageDescription& d, const std::string& model) {
  for (const v1::ServedModel& served : d.models()) {
    if (served.name() == model) return &served;
  }
  return nullptr;
}

// The stage's own description and its entry for the model, both checked.
absl::Status CheckStage(const PipelineModel& m, const StageSpec& s, const v1::StageDescription& d,
                        const v1::ServedModel** served) {
  if (std::find(d.kinds().begin(), d.kinds().end(), s.kind) == d.kinds().end()) {
    return Mismatch(m, s,
                    absl::StrCat("kind: the service does not run '", s.kind,
                                 "' stages (it runs: ", absl::StrJoin(d.kinds(), ", "), ")"));
  }
  *served = FindServed(d, m.name);
  if (*served == nullptr) {
    std::vector<std::string> names;
    for (const v1::ServedModel& x : d.models()) names.push_back(x.name());
    return Mismatch(m, s,
                    absl::StrCat("model: the service does not serve '", m.name,
                                 "' (it serves: ", absl::StrJoin(names, ", "), ")"));
  }
  const int g = (*served)->size_granularity();
  if (g > 0 && m.limits.size_granularity() % g != 0) {
    return Mismatch(m, s,
                    absl::StrCat("limits.size_granularity: ", m.limits.size_granularity(),
                                 " is not a multiple of the stage's ", g, " pixels"));
  }
  if (s.kind == "denoise" && (*served)->max_steps() > 0 &&
      m.limits.max_steps() > (*served)->max_steps()) {
    return Mismatch(m, s,
                    absl::StrCat("limits.max_steps: ", m.limits.max_steps(),
                                 " exceeds the stage's ", (*served)->max_steps()));
  }
  return absl::OkStatus();
}

// Every embedding the encoder produces has the width the denoise stage takes for it.
absl::Status CheckWidths(const PipelineModel& m, const StageSpec& producer,
                         const v1::ServedModel& encoder, const StageSpec& consumer,
                         const v1::ServedModel& denoise) {
  for (const auto& [name, width] : encoder.embedding_widths()) {
    auto taken = denoise.embedding_widths().find(name);
    if (taken == denoise.embedding_widths().end()) {
      return Mismatch(m, consumer,
                      absl::StrCat("embedding_widths: it takes no '", name, "', which stage '",
                                   producer.name, "' produces"));
    }
    if (taken->second != width) {
      return Mismatch(m, consumer,
                      absl::StrCat("embedding_widths['", name, "']: it takes width ", taken->second,
                                   ", stage '", producer.name, "' (service '", producer.service,
                                   "') produces ", width));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckStageDescriptions(const PipelineConfig& pipeline,
                                    const StageDescriptions& descriptions) {
  for (const PipelineModel& m : pipeline.models) {
    std::map<std::string, const v1::ServedModel*> served;  // stage name → its entry
    for (const StageSpec& s : m.stages) {
      auto d = descriptions.find({s.service, s.kind});
      if (d == descriptions.end()) continue;
      const v1::ServedModel* entry = nullptr;
      if (absl::Status st = CheckStage(m, s, d->second, &entry); !st.ok()) return st;
      served[s.name] = entry;
    }
    for (const StageSpec& s : m.stages) {
      if (s.kind != "denoise" || !served.count(s.name)) continue;
      for (const std::string& in : s.inputs) {
        const StageSpec* producer = m.FindStage(in);
        if (producer == nullptr || producer->kind != "encoder" || !served.count(in)) continue;
        if (absl::Status st = CheckWidths(m, *producer, *served[in], s, *served[s.name]);
            !st.ok()) {
          return st;
        }
      }
    }
  }
  return absl::OkStatus();
}

namespace {

template <typename Service>
grpc::Status Describe(const std::shared_ptr<grpc::Channel>& channel, absl::Duration deadline,
                      v1::StageDescription* out) {
  auto stub = Service::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  return stub->Describe(&ctx, v1::DescribeRequest(), out);
}

}  // namespace

absl::StatusOr<StageDescriptions> DescribeStages(const PipelineConfig& pipeline,
                                                 const ChannelOptions& channel,
                                                 absl::Duration deadline,
                                                 std::vector<std::string>* undescribed) {
  StageDescriptions out;
  std::set<std::pair<std::string, std::string>> asked;
  for (const PipelineModel& m : pipeline.models) {
    for (const StageSpec& s : m.stages) {
      if (!asked.insert({s.service, s.kind}).second) continue;
      auto address = pipeline.services.find(s.service);
      if (address == pipeline.services.end()) continue;  // Parse rejects such configs
      auto ch = CreateChannel(address->second, channel);
      v1::StageDescription d;
      grpc::Status st = s.kind == "ar"        ? Describe<v1::ArTokenService>(ch, deadline, &d)
                        : s.kind == "encoder" ? Describe<v1::EncoderService>(ch, deadline, &d)
                                              : Describe<v1::DenoiseService>(ch, deadline, &d);
      if (st.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
        if (undescribed != nullptr)
          undescribed->push_back(absl::StrCat(s.service, " (", s.kind, ")"));
        continue;
      }
      if (!st.ok()) {
        return absl::UnavailableError(absl::StrCat("Describe of service '", s.service, "' (",
                                                   s.kind, ") at ", address->second, ": ",
                                                   st.error_message()));
      }
      out[{s.service, s.kind}] = std::move(d);
    }
  }
  return out;
}

}  // namespace diffmesh
