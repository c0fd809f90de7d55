#pragma once
// The norm layers torchvision's ResNet takes as `norm_layer`: torch.nn.BatchNorm2d (also standing
// in for nn.SyncBatchNorm in one process) and torchvision.ops.FrozenBatchNorm2d, which detection
// backbones use. A norm slot also holds the SyncBatchNorm (sync_batch_norm.h) that data-parallel
// training swaps in for a BatchNorm2d.
#include <torch/nn.h>

#include "models/module_tree.h"

namespace torchtl::models {

enum class NormLayer { BatchNorm2d, FrozenBatchNorm2d };

// torchvision.ops.FrozenBatchNorm2d: batch norm with fixed statistics and affine parameters, all
// four buffers (weight, bias, running_mean, running_var), so nothing trains and the train/eval
// flag changes nothing.
class FrozenBatchNorm2dImpl : public torch::nn::Cloneable<FrozenBatchNorm2dImpl> {
 public:
  explicit FrozenBatchNorm2dImpl(int64_t num_features, double eps = 1e-5);
  void reset() override;
  // torchvision's arithmetic, op for op, so both give the same bits.
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  int64_t num_features;
  double eps;
  torch::Tensor weight, bias, running_mean, running_var;
};
TORCH_MODULE(FrozenBatchNorm2d);

std::shared_ptr<torch::nn::Module> make_norm(NormLayer kind, int64_t num_features);

// A block's norm slot (bn1, bn2, ...): any of these norm layers, called like a module holder.
class Norm2d {
 public:
  Norm2d() = default;
  Norm2d(std::nullptr_t) {}
  // Throws c10::TypeError for a module that is not a norm layer.
  explicit Norm2d(std::shared_ptr<torch::nn::Module> module);
  torch::Tensor operator()(const torch::Tensor& x) const { return forward_(x); }
  const std::shared_ptr<torch::nn::Module>& ptr() const { return module_; }
  // The scale (gamma): a parameter of (Sync)BatchNorm2d, a buffer of FrozenBatchNorm2d.
  torch::Tensor weight() const;

 private:
  std::shared_ptr<torch::nn::Module> module_;
  TensorForward forward_;
};

// EditableContainer::replace_child for a norm slot: the slot and the registry are updated
// together.
void assign_child(torch::nn::Module& parent, const std::string& name, Norm2d& member,
                  const std::shared_ptr<torch::nn::Module>& module);

}  // namespace torchtl::models
