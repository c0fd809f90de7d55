#include "models/fast_path.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace torchtl::models {

namespace {
thread_local bool exact = false;
// Set while a FiniteInputScope that found its input finite is open on this thread.
thread_local bool input_checked = false;

bool sums_to_finite(const at::Tensor& x) {
  at::NoGradGuard no_grad;
  return at::isfinite(x.sum()).item<bool>();
}

// The check applies where the fused ReLU can run: a floating-point CPU tensor on the fast path
// (on CUDA nothing is fused, and a host sync per call would cost).
bool needs_check(const at::Tensor& x) {
  return !exact && x.defined() && x.device().is_cpu() && at::isFloatingType(x.scalar_type());
}
}  // namespace

bool exact_mode() { return exact; }

void set_exact_mode(bool enabled) { exact = enabled; }

at::Tensor to_fast_layout(const at::Tensor& x) {
  if (exact || x.dim() != 4) return x;
  return x.contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor to_caller_layout(const at::Tensor& out, const at::Tensor& input) {
  if (out.dim() != 4 || input.dim() != 4 || input.is_contiguous(at::MemoryFormat::ChannelsLast)) return out;
  return out.contiguous();
}

FiniteInputScope::FiniteInputScope(const at::Tensor& input) {
  if (input_checked || !needs_check(input)) return;
  opened_ = true;
  previous_exact_ = exact;
  if (sums_to_finite(input)) {
    input_checked = true;
  } else {
    exact = true;
  }
}

FiniteInputScope::~FiniteInputScope() {
  if (!opened_) return;
  input_checked = false;
  exact = previous_exact_;
}

bool may_fuse_relu(const at::Tensor& x) { return input_checked || !needs_check(x) || sums_to_finite(x); }

bool cpu_supports_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  // CPUID leaf 7: subleaf 1 EAX bit 5 is AVX512_BF16, subleaf 0 EDX bit 22 is AMX-BF16. (ATen's
  // own cpuinfo is not exported from libtorch, and its capability query is not in every torch.)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_bf16 = (edx >> 22) & 1u;
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return amx_bf16;
  return amx_bf16 || ((eax >> 5) & 1u);
#else
  return false;
#endif
}


ChannelsLastParameters::ChannelsLastParameters(torch::nn::Module& model) {
  if (exact) return;
  for (auto& p : model.parameters()) {
    if (p.dim() != 4 || p.is_contiguous(at::MemoryFormat::ChannelsLast) || !p.is_contiguous()) continue;
    p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
    converted_.push_back(p);
  }
}

ChannelsLastParameters::~ChannelsLastParameters() {
  for (auto& p : converted_) p.set_data(p.contiguous());
}

}  // namespace torchtl::models
