#include "engine/progress.h"

namespace torchtl::engine {

void warn(const WarningFn& warning, Warning kind, const std::string& message) {
  if (warning) {
    warning(kind, message);
  } else {
    TORCH_WARN(message);
  }
}

void warn_skipped(const WarningFn& warning, const std::vector<std::string>& skipped, const std::string& where) {
  if (skipped.empty()) return;
  warn(warning, Warning::SkippedSamples,
       c10::str("skipped ", skipped.size(), " bad sample", skipped.size() == 1 ? "" : "s", " in ", where, "; first: ",
                skipped.front()));
}

bool ProgressThrottle::due(bool last_batch) {
  const auto now = std::chrono::steady_clock::now();
  if (!last_batch && now - last_ < std::chrono::milliseconds(200)) return false;
  last_ = now;
  return true;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace torchtl::engine
