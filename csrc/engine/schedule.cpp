#include "engine/schedule.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

#include "engine/choices.h"

namespace torchtl::engine {

const std::vector<std::string>& schedule_kinds() {
  static const std::vector<std::string> kinds{"constant", "step", "cosine", "poly", "exponential"};
  return kinds;
}

LRSchedule::LRSchedule(ScheduleOptions options) : options_(std::move(options)) {
  const auto& k = options_.kind;
  const auto& kinds = schedule_kinds();
  TORCH_CHECK_VALUE(std::find(kinds.begin(), kinds.end(), k) != kinds.end(), "unknown lr_schedule '", k,
                    "'; choose constant, step, cosine, poly or exponential");
  TORCH_CHECK_VALUE(options_.warmup_method == "linear" || options_.warmup_method == "constant",
                    "unknown lr_warmup_method '", options_.warmup_method, "'; choose linear or constant");
  TORCH_CHECK_VALUE(options_.lr_min >= 0.0, "lr_min must be >= 0, got ", options_.lr_min);
  TORCH_CHECK_VALUE(options_.epochs > 0 && options_.iters_per_epoch > 0, "a schedule needs epochs and iterations");
  TORCH_CHECK_VALUE(options_.warmup_epochs >= 0 && (options_.warmup_epochs == 0 || options_.warmup_epochs < options_.epochs),
                    "warmup_epochs (", options_.warmup_epochs, ") must be shorter than epochs (", options_.epochs, ")");
  TORCH_CHECK_VALUE(k != "step" || options_.step_size > 0, "step schedule needs step_size > 0");
}

double LRSchedule::factor(int64_t it) const {
  const auto& o = options_;
  const int64_t warmup_iters = o.warmup_epochs * o.iters_per_epoch;
  if (it < warmup_iters) {
    // torch.optim.lr_scheduler.ConstantLR(factor=warmup_factor, total_iters=warmup_iters)
    if (o.warmup_method == "constant") return o.warmup_factor;
    // torch.optim.lr_scheduler.LinearLR(start_factor=warmup_factor, total_iters=warmup_iters)
    return o.warmup_factor + (1.0 - o.warmup_factor) * static_cast<double>(it) / static_cast<double>(warmup_iters);
  }
  const int64_t t = it - warmup_iters;
  const int64_t total = (o.epochs - o.warmup_epochs) * o.iters_per_epoch;
  if (o.kind == "step") return std::pow(o.gamma, static_cast<double>(t / (o.step_size * o.iters_per_epoch)));
  if (o.kind == "cosine") return 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(std::min(t, total)) / total));
  if (o.kind == "poly") return std::pow(std::max(0.0, 1.0 - static_cast<double>(t) / total), o.power);
  if (o.kind == "exponential") return std::pow(o.gamma, static_cast<double>(t / o.iters_per_epoch));
  return 1.0;
}

double LRSchedule::lr(int64_t it, double base_lr) const {
  const auto& o = options_;
  const int64_t warmup_iters = o.warmup_epochs * o.iters_per_epoch;
  if (o.kind != "cosine" || it < warmup_iters || o.lr_min == 0.0) return base_lr * factor(it);
  // CosineAnnealingLR's closed form: eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2.
  return o.lr_min + (base_lr - o.lr_min) * factor(it);
}

}  // namespace torchtl::engine
