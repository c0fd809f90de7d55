#include "models/norm.h"

#include <c10/util/Exception.h>

#include "models/sync_batch_norm.h"

namespace torchtl::models {

FrozenBatchNorm2dImpl::FrozenBatchNorm2dImpl(int64_t num_features_, double eps_)
    : num_features(num_features_), eps(eps_) {
  reset();
}

void FrozenBatchNorm2dImpl::reset() {
  // torchvision's registration order, which is also its state-dict order.
  weight = register_buffer("weight", torch::ones(num_features));
  bias = register_buffer("bias", torch::zeros(num_features));
  running_mean = register_buffer("running_mean", torch::zeros(num_features));
  running_var = register_buffer("running_var", torch::ones(num_features));
}

torch::Tensor FrozenBatchNorm2dImpl::forward(const torch::Tensor& x) {
  auto w = weight.reshape({1, -1, 1, 1});
  auto b = bias.reshape({1, -1, 1, 1});
  auto rv = running_var.reshape({1, -1, 1, 1});
  auto rm = running_mean.reshape({1, -1, 1, 1});
  auto scale = w * (rv + eps).rsqrt();
  auto shift = b - rm * scale;
  return x * scale + shift;
}

void FrozenBatchNorm2dImpl::pretty_print(std::ostream& stream) const {
  stream << "FrozenBatchNorm2d(" << num_features << ", eps=" << eps << ")";
}

std::shared_ptr<torch::nn::Module> make_norm(NormLayer kind, int64_t num_features) {
  if (kind == NormLayer::FrozenBatchNorm2d) return FrozenBatchNorm2d(num_features).ptr();
  return torch::nn::BatchNorm2d(num_features).ptr();
}

namespace {

bool is_norm_layer(const std::shared_ptr<torch::nn::Module>& module) {
  return std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(module) ||
         std::dynamic_pointer_cast<FrozenBatchNorm2dImpl>(module) || std::dynamic_pointer_cast<SyncBatchNormImpl>(module);
}

}  // namespace

Norm2d::Norm2d(std::shared_ptr<torch::nn::Module> module) : module_(std::move(module)) {
  TORCH_CHECK_TYPE(is_norm_layer(module_), "a norm slot takes a BatchNorm2d, a SyncBatchNorm or a FrozenBatchNorm2d, got ",
                   module_ ? module_->name() : std::string("nothing"));
  forward_ = tensor_forward(module_);
}

torch::Tensor Norm2d::weight() const {
  if (auto bn = std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(module_)) return bn->weight;
  if (auto sync = std::dynamic_pointer_cast<SyncBatchNormImpl>(module_)) return sync->weight;
  return std::dynamic_pointer_cast<FrozenBatchNorm2dImpl>(module_)->weight;
}

void assign_child(torch::nn::Module& parent, const std::string& name, Norm2d& member,
                  const std::shared_ptr<torch::nn::Module>& module) {
  TORCH_CHECK_TYPE(is_norm_layer(module), "cannot set ", name, " of ", parent.name(),
                   ": expected a BatchNorm2d, a SyncBatchNorm or a FrozenBatchNorm2d, got ",
                   module ? module->name() : std::string("nothing"));
  member = Norm2d(module);
  parent.replace_module(name, module);
}

}  // namespace torchtl::models
