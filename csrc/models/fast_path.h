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

// oneDNN's convolution with a fused ReLU (fold_bn.h) maps NaN to 0, so a batch holding NaN would give
// finite, plausible outputs where torchvision gives NaN. A model's entry opens this scope over its
// input: on the CPU fast path it sums the input once (one reduction over a 3-channel batch, far
// below 1% of a forward), and when the sum is not finite (a NaN or an infinity in the batch, or
// values so large that the network would overflow) the call runs in exact mode, giving
// torchvision's result bit for bit. Scopes nest: only the outermost checks.
class FiniteInputScope {
 public:
  explicit FiniteInputScope(const at::Tensor& input);
  ~FiniteInputScope();
  FiniteInputScope(const FiniteInputScope&) = delete;
  FiniteInputScope& operator=(const FiniteInputScope&) = delete;

 private:
  bool opened_ = false;
  bool previous_exact_ = false;
};

// Whether a ReLU may run fused into the convolution of `x`: inside a FiniteInputScope, the scope
// has checked the input already; a block called on its own (model.layer1(x)) checks `x` here.
bool may_fuse_relu(const at::Tensor& x);

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
