#include "models/fold_bn.h"

#include <ATen/autocast_mode.h>

#include <variant>

#include "models/fast_path.h"

namespace torchtl::models {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

namespace {

std::vector<torch::Tensor> sources_of(nn::Conv2dImpl& conv, nn::BatchNorm2dImpl& bn) {
  return {conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var};
}

bool needs_grad(const std::vector<torch::Tensor>& tensors) {
  if (!torch::GradMode::is_enabled()) return false;
  for (const auto& t : tensors) {
    if (t.defined() && t.requires_grad()) return true;
  }
  return false;
}

// The dtype the convolution will run in: autocast's for x's device when it is on.
at::ScalarType compute_dtype(const torch::Tensor& x, const torch::Tensor& weight) {
  const auto device = x.device().type();
  if ((device == at::kCPU || device == at::kCUDA) && at::autocast::is_autocast_enabled(device) &&
      at::isFloatingType(x.scalar_type())) {
    return at::autocast::get_autocast_dtype(device);
  }
  return weight.scalar_type();
}

}  // namespace

std::shared_ptr<const FoldedConvBN::Folded> FoldedConvBN::folded(nn::Conv2dImpl& conv, nn::BatchNorm2dImpl& bn,
                                                                 at::ScalarType dtype) {
  const auto sources = sources_of(conv, bn);
  std::lock_guard<std::mutex> lock(mutex_);
  if (folded_ && folded_->dtype == dtype && folded_->eps == bn.options.eps()) {
    bool fresh = true;
    for (size_t i = 0; i < sources.size() && fresh; ++i) {
      const auto& s = folded_->sources[i];
      fresh = s.tensor.is_same(sources[i]) &&
              (!s.tensor.defined() || (s.version == s.tensor._version() && s.data == s.tensor.const_data_ptr()));
    }
    if (fresh) return folded_;
  }
  torch::NoGradGuard no_grad;
  // Fold in the weights' own precision, cast once at the end.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  auto result = std::make_shared<Folded>();
  for (const auto& t : sources) {
    result->sources.push_back({t, t.defined() ? t._version() : int64_t{0}, t.defined() ? t.const_data_ptr() : nullptr});
  }
  result->eps = bn.options.eps();
  result->dtype = dtype;
  const auto scale = bn.running_var.add(bn.options.eps()).rsqrt() * (bn.weight.defined() ? bn.weight : torch::ones_like(bn.running_var));
  const auto conv_bias = conv.bias.defined() ? conv.bias : torch::zeros_like(bn.running_mean);
  auto shift = (conv_bias - bn.running_mean) * scale;
  if (bn.bias.defined()) shift = shift + bn.bias;
  result->weight = (conv.weight * scale.reshape({-1, 1, 1, 1})).contiguous(torch::MemoryFormat::ChannelsLast).to(dtype);
  result->bias = shift.to(dtype);
  folded_ = result;
  return result;
}

torch::Tensor FoldedConvBN::operator()(nn::Conv2dImpl& conv, nn::BatchNorm2dImpl& bn, const torch::Tensor& x) {
  const bool foldable = !bn.is_training() && !exact_mode() && bn.running_mean.defined() && x.dim() == 4 &&
                        std::holds_alternative<torch::enumtype::kZeros>(conv.options.padding_mode()) &&
                        !needs_grad(sources_of(conv, bn));
  if (!foldable) {
    if (bn.is_training()) {
      std::lock_guard<std::mutex> lock(mutex_);
      folded_.reset();
    }
    return bn.forward(conv.forward(x));
  }
  const auto f = folded(conv, bn, compute_dtype(x, conv.weight));
  return F::detail::conv2d(x, f->weight, f->bias, conv.options.stride(), conv.options.padding(),
                           conv.options.dilation(), conv.options.groups());
}

torch::Tensor FoldedConvBN::operator()(nn::SequentialImpl& branch, const torch::Tensor& x) {
  if (branch.size() == 2) {
    auto* conv = branch.ptr(0)->as<nn::Conv2dImpl>();
    auto* bn = branch.ptr(1)->as<nn::BatchNorm2dImpl>();
    if (conv && bn) return (*this)(*conv, *bn, x);
  }
  return branch.forward(x);
}

torch::Tensor FoldedConvBN::operator()(nn::Conv2dImpl& conv, const Norm2d& norm, const torch::Tensor& x) {
  if (auto* bn = dynamic_cast<nn::BatchNorm2dImpl*>(norm.ptr().get())) return (*this)(conv, *bn, x);
  return norm(conv.forward(x));
}

}  // namespace torchtl::models
