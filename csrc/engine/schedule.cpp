#include "engine/schedule.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

#include "engine/choices.h"

namespace torchtl::engine {

LRSchedule::LRSchedule(ScheduleOptions options) : options_(std::move(options)) {
  const auto& k = options_.kind;
  check_fit_choice("lr_schedule", k);
  TORCH_CHECK_VALUE(options_.epochs > 0 && options_.iters_per_epoch > 0, "a schedule needs epochs and iterations");
  TORCH_CHECK_VALUE(options_.warmup_epochs >= 0 && (options_.warmup_epochs == 0 || options_.warmup_epochs < options_.epochs),
                    "warmup_epochs (", options_.warmup_epochs, ") must be shorter than epochs (", options_.epochs, ")");
  TORCH_CHECK_VALUE(k != "step" || options_.step_size > 0, "step schedule needs step_size > 0");
}

double LRSchedule::factor(int64_t it) const {
  const auto& o = options_;
  const int64_t warmup_iters = o.warmup_epochs * o.iters_per_epoch;
  if (it < warmup_iters) {
    // torch.optim.lr_scheduler.LinearLR(start_factor=warmup_factor, total_iters=warmup_iters)
    return o.warmup_factor + (1.0 - o.warmup_factor) * static_cast<double>(it) / static_cast<double>(warmup_iters);
  }
  const int64_t t = it - warmup_iters;
  const int64_t total = (o.epochs - o.warmup_epochs) * o.iters_per_epoch;
  if (o.kind == "step") return std::pow(o.gamma, static_cast<double>(t / (o.step_size * o.iters_per_epoch)));
  if (o.kind == "cosine") return 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(std::min(t, total)) / total));
  if (o.kind == "poly") return std::pow(std::max(0.0, 1.0 - static_cast<double>(t) / total), o.power);
  return 1.0;
}

}  // namespace torchtl::engine
