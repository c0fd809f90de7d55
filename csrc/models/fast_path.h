#pragma once
// How torchtl's models run by default, and the exact mode that switches it off.
//
// The fast path: a 4-D input enters the model in channels_last (the layout oneDNN's convolutions
// run fastest in on the CPU, and cuDNN's tensor cores on CUDA), the output is handed back in the
// caller's layout, and in eval mode without autograd each Conv2d + BatchNorm2d pair runs as one
// convolution (fold_bn.h). The numbers differ from torchvision's default execution by rounding
// only (tests/test_fast_path.py holds the tolerance).
//
// Exact mode runs torchvision's default execution (contiguous fp32, BatchNorm unfolded), so a
// torchtl model and its torchvision twin agree bit for bit. Like torch's autocast and grad mode
// it is a per-thread setting: the C++ loops run on the calling thread and inherit it.
#include <ATen/core/Tensor.h>

#include <vector>

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace torchtl::models {

bool exact_mode();
void set_exact_mode(bool enabled);

// Sets exact mode for a scope and restores the previous setting on exit.
class ExactModeGuard {
 public:
  explicit ExactModeGuard(bool enabled = true) : previous_(exact_mode()) { set_exact_mode(enabled); }
  ~ExactModeGuard() { set_exact_mode(previous_); }
  ExactModeGuard(const ExactModeGuard&) = delete;
  ExactModeGuard& operator=(const ExactModeGuard&) = delete;

 private:
  bool previous_;
};

// `x` as the model's layers should see it: channels_last for a 4-D batch unless in exact mode.
at::Tensor to_fast_layout(const at::Tensor& x);

// `out` in the layout the caller gave `input` in: a contiguous input gets contiguous outputs.
at::Tensor to_caller_layout(const at::Tensor& out, const at::Tensor& input);

// Whether this CPU runs bfloat16 convolutions and matrix products natively (AVX-512 BF16 or
// AMX), where bf16 autocast pays; elsewhere oneDNN emulates it, slower than fp32.
bool cpu_supports_bf16();

}  // namespace torchtl::models

namespace torchtl::models {

// Keeps a model's 4-D parameters in channels_last for a scope, such as a training run, and puts
// them back in the contiguous layout after it. Training changes the weights at every step, so a
// cached channels_last copy would be rebuilt at every step; converting the parameters themselves
// (in place: the Python face shares them) costs one copy per run. Restoring them afterwards means
// users, torchvision twins and exact mode never see the training layout. Does nothing in exact mode.
class ChannelsLastParameters {
 public:
  explicit ChannelsLastParameters(torch::nn::Module& model);
  ~ChannelsLastParameters();
  ChannelsLastParameters(const ChannelsLastParameters&) = delete;
  ChannelsLastParameters& operator=(const ChannelsLastParameters&) = delete;

 private:
  std::vector<at::Tensor> converted_;
};

}  // namespace torchtl::models
