#include "segmentation_models/modules.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace torchtl::segmentation_models {

namespace nn = torch::nn;

DecoderNorm decoder_norm(const std::string& name) {
  if (name == "batchnorm") return DecoderNorm::BatchNorm;
  if (name == "identity") return DecoderNorm::Identity;
  TORCH_CHECK_VALUE(false, "decoder_use_norm '", name,
                    "' is not supported: torchtl builds \"batchnorm\" (True) and \"identity\" (False)");
}

// Each layer is pushed in its own statement: the order of function arguments is unspecified in
// C++, and the layers must draw their default initialisation in smp's order.
Conv2dReLUImpl::Conv2dReLUImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t padding,
                               int64_t stride, DecoderNorm norm) {
  const bool identity = norm == DecoderNorm::Identity;
  push_back(nn::Conv2d(
      nn::Conv2dOptions(in_channels, out_channels, kernel_size).stride(stride).padding(padding).bias(identity)));
  if (identity) {
    push_back(nn::Identity());
  } else {
    push_back(nn::BatchNorm2d(out_channels));
  }
  push_back(nn::ReLU(nn::ReLUOptions(true)));
}

ModuleChainImpl::ModuleChainImpl(const std::vector<std::shared_ptr<nn::Module>>& modules) {
  for (size_t i = 0; i < modules.size(); ++i) {
    register_module(std::to_string(i), modules[i]);
    forwards_.push_back(models::tensor_forward(modules[i]));
  }
}

torch::Tensor ModuleChainImpl::forward(const torch::Tensor& x) {
  auto out = x;
  for (const auto& forward : forwards_) out = forward(out);
  return out;
}

void ModuleChainImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "a ModuleChain has no child '", name, "' that C++ can replace");
}

SCSEModuleImpl::SCSEModuleImpl(int64_t in_channels, int64_t reduction) {
  nn::Sequential channel;
  channel->push_back(nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
  channel->push_back(nn::Conv2d(nn::Conv2dOptions(in_channels, in_channels / reduction, 1)));
  channel->push_back(nn::ReLU(nn::ReLUOptions(true)));
  channel->push_back(nn::Conv2d(nn::Conv2dOptions(in_channels / reduction, in_channels, 1)));
  channel->push_back(nn::Sigmoid());
  cSE = register_module("cSE", channel);
  nn::Sequential spatial;
  spatial->push_back(nn::Conv2d(nn::Conv2dOptions(in_channels, 1, 1)));
  spatial->push_back(nn::Sigmoid());
  sSE = register_module("sSE", spatial);
}

torch::Tensor SCSEModuleImpl::forward(const torch::Tensor& x) {
  // One statement per branch: smp's order, so autograd sums the gradients of x in the same order.
  const auto channel = x * cSE->forward(x);
  const auto spatial = x * sSE->forward(x);
  return channel + spatial;
}

void SCSEModuleImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "SCSEModule has no child '", name, "' that C++ can replace");
}

void NamedWrapperImpl::set_child(const std::string& name, std::shared_ptr<nn::Module> module) {
  child_ = name;
  forward_ = models::tensor_forward(module);
  register_module(name, std::move(module));
}

void NamedWrapperImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module> module) {
  TORCH_CHECK_VALUE(name == child_, this->name(), " has no child '", name, "'");
  auto forward = models::tensor_forward(module);  // throws for a module C++ cannot run
  replace_module(name, module);
  forward_ = std::move(forward);
}

AttentionImpl::AttentionImpl(const std::optional<std::string>& name, int64_t in_channels) {
  if (!name) {
    set_child("attention", nn::Identity().ptr());
  } else {
    TORCH_CHECK_VALUE(*name == "scse", "Attention ", *name, " is not implemented");
    set_child("attention", SCSEModule(in_channels).ptr());
  }
}

ActivationImpl::ActivationImpl(const std::optional<std::string>& name) {
  std::shared_ptr<nn::Module> module;
  if (!name || *name == "identity") module = nn::Identity().ptr();
  else if (*name == "sigmoid") module = nn::Sigmoid().ptr();
  // torch.nn.Softmax(dim=None) picks dim 1 for the 2-D and 4-D tensors the heads return.
  else if (*name == "softmax2d" || *name == "softmax") module = nn::Softmax(1).ptr();
  else if (*name == "logsoftmax") module = nn::LogSoftmax(1).ptr();
  else if (*name == "tanh") module = nn::Tanh().ptr();
  TORCH_CHECK_VALUE(module != nullptr, "Activation should be sigmoid/softmax/softmax2d/logsoftmax/tanh/identity/None; got ",
                    *name, " (torchtl builds these in C++; for another, assign a torch.nn module to the head's ",
                    "activation.activation in Python)");
  set_child("activation", module);
}

SegmentationHeadImpl::SegmentationHeadImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size,
                                           const std::optional<std::string>& activation, int64_t upsampling) {
  push_back(nn::Conv2d(nn::Conv2dOptions(in_channels, out_channels, kernel_size).padding(kernel_size / 2)));
  if (upsampling > 1) {
    push_back(nn::Upsample(nn::UpsampleOptions()
                               .scale_factor(std::vector<double>{static_cast<double>(upsampling), static_cast<double>(upsampling)})
                               .mode(torch::kBilinear)
                               .align_corners(true)));
  } else {
    push_back(nn::Identity());
  }
  push_back(Activation(activation));
}

ClassificationHeadImpl::ClassificationHeadImpl(int64_t in_channels, const ClassificationHeadOptions& options) {
  const auto& pooling = options.pooling();
  TORCH_CHECK_VALUE(pooling == "avg" || pooling == "max", "Pooling should be one of ('max', 'avg'), got ", pooling, ".");
  if (pooling == "avg") {
    push_back(nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
  } else {
    push_back(nn::AdaptiveMaxPool2d(nn::AdaptiveMaxPool2dOptions({1, 1})));
  }
  push_back(nn::Flatten());
  if (options.dropout() != 0.0) {
    push_back(nn::Dropout(nn::DropoutOptions(options.dropout()).inplace(true)));
  } else {
    push_back(nn::Identity());
  }
  push_back(nn::Linear(nn::LinearOptions(in_channels, options.classes()).bias(true)));
  push_back(Activation(options.activation()));
}

void initialize_decoder(nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& m : module.modules(/*include_self=*/true)) {
    if (auto* conv = m->as<nn::Conv2d>()) {
      nn::init::kaiming_uniform_(conv->weight, 0.0, torch::kFanIn, torch::kReLU);
      if (conv->bias.defined()) nn::init::constant_(conv->bias, 0);
    } else if (auto* bn = m->as<nn::BatchNorm2d>()) {
      nn::init::constant_(bn->weight, 1);
      nn::init::constant_(bn->bias, 0);
    } else if (auto* gn = m->as<nn::GroupNorm>()) {
      nn::init::constant_(gn->weight, 1);
      nn::init::constant_(gn->bias, 0);
    } else if (auto* linear = m->as<nn::Linear>()) {
      nn::init::xavier_uniform_(linear->weight);
      if (linear->bias.defined()) nn::init::constant_(linear->bias, 0);
    }
  }
}

void initialize_head(nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& m : module.modules(/*include_self=*/true)) {
    torch::Tensor weight, bias;
    if (auto* conv = m->as<nn::Conv2d>()) {
      weight = conv->weight;
      bias = conv->bias;
    } else if (auto* linear = m->as<nn::Linear>()) {
      weight = linear->weight;
      bias = linear->bias;
    } else {
      continue;
    }
    nn::init::xavier_uniform_(weight);
    if (bias.defined()) nn::init::constant_(bias, 0);
  }
}

}  // namespace torchtl::segmentation_models
