#include "engine/amp.h"

#include <ATen/Functions.h>
#include <ATen/autocast_mode.h>
#include <c10/util/Exception.h>

#include "engine/choices.h"
#include "models/fast_path.h"

namespace torchtl::engine {

std::optional<at::ScalarType> amp_dtype(const std::string& amp, c10::Device device) {
  check_fit_choice("amp", amp);
  if (amp == "off") return std::nullopt;
  TORCH_CHECK_VALUE(device.is_cuda() || device.is_cpu(), "amp='", amp, "' runs on CPU or CUDA devices, got ", device);
  if (device.is_cpu()) {
    TORCH_CHECK_VALUE(amp == "bf16", "amp='fp16' needs a CUDA device; on the CPU use amp='bf16'");
    TORCH_CHECK_VALUE(models::cpu_supports_bf16(), "amp='bf16' on the CPU needs AVX-512 BF16 or AMX, which this CPU ",
                      "lacks (bf16 would run slower than fp32 here); use amp='off'");
  }
  return amp == "bf16" ? at::kBFloat16 : at::kHalf;
}

AutocastScope::AutocastScope(std::optional<at::ScalarType> dtype, c10::Device device)
    : enabled_(dtype.has_value()), device_(device.type()) {
  if (!enabled_) return;
  previous_enabled_ = at::autocast::is_autocast_enabled(device_);
  previous_dtype_ = at::autocast::get_autocast_dtype(device_);
  at::autocast::set_autocast_enabled(device_, true);
  at::autocast::set_autocast_dtype(device_, *dtype);
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
  at::autocast::set_autocast_enabled(device_, previous_enabled_);
  at::autocast::set_autocast_dtype(device_, previous_dtype_);
  if (!previous_enabled_) at::autocast::clear_cache();
}

GradScaler::GradScaler(bool enabled, c10::Device device) : enabled_(enabled) {
  if (!enabled_) return;
  scale_ = at::full({}, 65536.0, at::TensorOptions().dtype(at::kFloat).device(device));
  growth_tracker_ = at::zeros({}, at::TensorOptions().dtype(at::kInt).device(device));
  found_inf_ = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
}

at::Tensor GradScaler::scaled(const at::Tensor& loss) const { return enabled_ ? loss * scale_ : loss; }

bool GradScaler::unscale(const std::vector<at::Tensor>& params) {
  if (!enabled_) return true;
  std::vector<at::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  found_inf_.zero_();
  at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf_, scale_.reciprocal());
  return found_inf_.item<float>() == 0.0f;
}

void GradScaler::update() {
  if (enabled_) at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, 2.0, 0.5, 2000);
}

}  // namespace torchtl::engine
