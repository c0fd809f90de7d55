#pragma once
// Learning-rate schedules of torchvision's references, evaluated per iteration: a multiplier of
// each parameter group's base learning rate, with an optional linear warm-up.
#include <cstdint>
#include <string>

namespace torchtl::engine {

struct ScheduleOptions {
  // "constant", "step" (x gamma every step_size epochs), "cosine" (to 0), "poly" ((1 - t)^power,
  // the segmentation recipe).
  std::string kind = "constant";
  int64_t epochs = 1;
  int64_t iters_per_epoch = 1;
  int64_t step_size = 30;
  double gamma = 0.1;
  double power = 0.9;
  int64_t warmup_epochs = 0;
  double warmup_factor = 0.01;  // the multiplier at the first warm-up iteration
};

class LRSchedule {
 public:
  explicit LRSchedule(ScheduleOptions options);
  // Multiplier for iteration `it` (0-based, counted over the whole run).
  double factor(int64_t it) const;

 private:
  ScheduleOptions options_;
};

}  // namespace torchtl::engine
