#include "services/cli/progress.h"

#include <string>

namespace diffmesh::cli {

void ProgressPrinter::EndLine() {
  if (open_line_) {
    std::fputc('\n', out_);
    open_line_ = false;
  }
}

void ProgressPrinter::Bar(const char* what, int done, int total, const char* unit) {
  constexpr int kWidth = 30;
  const int filled = total > 0 ? done * kWidth / total : 0;
  std::string bar(filled, '#');
  bar.append(kWidth - filled, '.');
  std::fprintf(out_, "\r%-8s [%s] %d/%d %s", what, bar.c_str(), done, total, unit);
  std::fflush(out_);
  open_line_ = true;
}

void ProgressPrinter::OnEvent(const v1::GenerateEvent& e) {
  switch (e.event_case()) {
    case v1::GenerateEvent::kAccepted: {
      const auto& a = e.accepted().request();
      std::fprintf(out_, "accepted %s: %s %dx%d, %d steps, guidance %.2f, seed %llu\n",
                   e.accepted().request_id().c_str(), a.model().c_str(), a.width(), a.height(),
                   a.steps(), a.guidance().main().cfg_scale(),
                   static_cast<unsigned long long>(a.seed()));
      break;
    }
    case v1::GenerateEvent::kStage: {
      const auto& s = e.stage();
      if (s.kind() == v1::StageEvent::KIND_STARTED) {
        if (!tty_) std::fprintf(out_, "stage %s started\n", s.stage().c_str());
      } else {
        EndLine();
        std::fprintf(out_, "stage %s finished in %.2f s\n", s.stage().c_str(), s.duration_seconds());
      }
      break;
    }
    case v1::GenerateEvent::kProgress: {
      const auto& p = e.progress();
      if (tty_) {
        Bar(p.stage().c_str(), static_cast<int>(p.done()), static_cast<int>(p.total()),
            (p.unit() + "s").c_str());
        break;
      }
      // Plain output: about ten lines per stage, not one per event.
      const int line = p.total() > 0 ? static_cast<int>(p.done() * 10 / p.total()) : 0;
      int& last = last_line_[p.stage()];
      if (line != last || p.done() == p.total()) {
        std::fprintf(out_, "%s %s %lld/%lld\n", p.stage().c_str(), p.unit().c_str(),
                     static_cast<long long>(p.done()), static_cast<long long>(p.total()));
        last = line;
      }
      break;
    }
    case v1::GenerateEvent::kResult: {
      EndLine();
      const auto& m = e.result().metadata();
      std::fprintf(out_, "done in %.2f s:", m.total_seconds());
      for (const auto& t : m.stage_timings()) std::fprintf(out_, " %s %.2f s", t.stage().c_str(), t.seconds());
      std::fprintf(out_, "\n");
      break;
    }
    default:
      break;
  }
  std::fflush(out_);
}

}  // namespace diffmesh::cli
