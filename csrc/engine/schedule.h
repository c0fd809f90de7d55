#pragma once
// Learning-rate schedules of torchvision's references, evaluated per iteration: a multiplier of
// each parameter group's base learning rate, with an optional linear warm-up.
#include <cstdint>
#include <string>
#include <vector>

namespace torchtl::engine {

struct ScheduleOptions {
  // "constant", "step" (x gamma every step_size epochs), "cosine" (to lr_min), "poly" ((1 - t)^power,
  // the segmentation recipe), "exponential" (x gamma every epoch: ExponentialLR).
  std::string kind = "constant";
  int64_t epochs = 1;
  int64_t iters_per_epoch = 1;
  int64_t step_size = 30;
  double gamma = 0.1;
  double power = 0.9;
  int64_t warmup_epochs = 0;
  double warmup_factor = 0.01;  // the references' --lr-warmup-decay
  // The references' --lr-warmup-method: "linear" (LinearLR from warmup_factor to 1) or "constant"
  // (ConstantLR: warmup_factor throughout the warm-up).
  std::string warmup_method = "linear";
  double lr_min = 0.0;  // cosine's eta_min (CosineAnnealingLR), an absolute learning rate
};

// The schedule kinds LRSchedule computes; fit() takes those of its lr_schedule choices.
const std::vector<std::string>& schedule_kinds();

class LRSchedule {
 public:
  explicit LRSchedule(ScheduleOptions options);
  // Multiplier for iteration `it` (0-based, counted over the whole run); lr_min is not in it.
  double factor(int64_t it) const;
  // The learning rate at iteration `it` of a group whose base rate is base_lr: base_lr * factor,
  // except after the warm-up of "cosine", which falls to lr_min as CosineAnnealingLR(eta_min) does.
  double lr(int64_t it, double base_lr) const;

 private:
  ScheduleOptions options_;
};

}  // namespace torchtl::engine
