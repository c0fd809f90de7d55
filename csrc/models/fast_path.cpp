#include "models/fast_path.h"

#include <torch/nn/module.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace torchtl::models {

namespace {
thread_local bool exact = false;
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
