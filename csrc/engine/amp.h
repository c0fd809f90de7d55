#pragma once
// Mixed precision for the C++ loops: the `amp` option ("off", "fp16", "bf16") resolved for a
// device, autocast around the forward pass, on the CPU (bf16 through oneDNN) as on CUDA, and the
// gradient scaling fp16 needs.
// at::autocast state is per thread, like torch.autocast's: the scope covers the calling thread,
// which is where the loops run their forward passes.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>
#include <vector>

namespace torchtl::engine {

// The autocast dtype for `amp` on `device`, or nothing for "off". Throws for an unknown value,
// for fp16 on the CPU (no fast fp16 kernels there) and for bf16 on a CPU without native bf16
// (AVX-512 BF16 or AMX), where it would run slower than fp32.
std::optional<at::ScalarType> amp_dtype(const std::string& amp, c10::Device device);

// Autocast on `device` in `dtype` for a scope; a no-op when dtype is empty.
class AutocastScope {
 public:
  AutocastScope(std::optional<at::ScalarType> dtype, c10::Device device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  at::DeviceType device_;
  bool previous_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kFloat;
};

// torch.amp.GradScaler's algorithm on ATen's own kernels (the C++ frontend has no GradScaler);
// a no-op unless enabled.
class GradScaler {
 public:
  GradScaler(bool enabled, c10::Device device);
  // The loss to call backward() on: scaled when enabled.
  at::Tensor scaled(const at::Tensor& loss) const;
  // Unscales the gradients; false when they overflowed (the step is skipped, as GradScaler does).
  bool unscale(const std::vector<at::Tensor>& params);
  void update();

 private:
  bool enabled_;
  at::Tensor scale_, growth_tracker_, found_inf_;
};

}  // namespace torchtl::engine
