#pragma once
// What the loops report while they run: progress between batches (throttled, for a progress bar)
// and warnings (skipped samples, non-finite losses), each through a callback.
#include <c10/util/Exception.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace torchtl::engine {

struct Progress {
  bool training = true;
  int64_t epoch = 0, epochs = 0, batch = 0, num_batches = 0, images = 0;
  double loss = 0.0, accuracy = 0.0;  // running means; accuracy is -1 when not measured
};
// Called between batches (throttled); returning false stops cleanly after the current batch.
using ProgressFn = std::function<bool(const Progress&)>;

enum class Warning { SkippedSamples, NonFiniteLoss };
// Where the loops' warnings go; without one they go to TORCH_WARN.
using WarningFn = std::function<void(Warning, const std::string&)>;

void warn(const WarningFn& warning, Warning kind, const std::string& message);
// One warning for the samples on_error="skip" dropped in `where`, naming the first.
void warn_skipped(const WarningFn& warning, const std::vector<std::string>& skipped, const std::string& where);

// Calls to a ProgressFn at most every 200 ms, and always for the last batch.
class ProgressThrottle {
 public:
  bool due(bool last_batch);

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now() - std::chrono::seconds(1);
};

double seconds_since(std::chrono::steady_clock::time_point start);

}  // namespace torchtl::engine
