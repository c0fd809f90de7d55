#include "models/fold_bn.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
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

// oneDNN's fused convolution and its weight reorder, registered by a torch built with oneDNN
// (every x86 and aarch64 wheel); absent elsewhere, and then ATen's conv2d runs.
using PointwiseConvolution =
    at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::IntArrayRef,
               c10::IntArrayRef, c10::IntArrayRef, int64_t, c10::string_view, c10::List<std::optional<c10::Scalar>>,
               std::optional<c10::string_view>);
using ReorderConvolutionWeight =
    at::Tensor(const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t, at::OptionalIntArrayRef);

struct OneDnnOps {
  c10::TypedOperatorHandle<PointwiseConvolution> convolution;
  c10::TypedOperatorHandle<ReorderConvolutionWeight> reorder_weight;
};

const std::optional<OneDnnOps>& onednn_ops() {
  static const std::optional<OneDnnOps> ops = []() -> std::optional<OneDnnOps> {
    auto& dispatcher = c10::Dispatcher::singleton();
    auto convolution = dispatcher.findSchema({"mkldnn::_convolution_pointwise", ""});
    auto reorder_weight = dispatcher.findSchema({"mkldnn::_reorder_convolution_weight", ""});
    if (!convolution || !reorder_weight) return std::nullopt;
    return OneDnnOps{convolution->typed<PointwiseConvolution>(), reorder_weight->typed<ReorderConvolutionWeight>()};
  }();
  return ops;
}

// Whether the folded convolution of `x` can run through oneDNN's fused convolution: a CPU batch
// in channels_last (the fast path's layout) in fp32 or bf16, explicit padding, and no autograd
// through x (the fused op has no backward).
bool runs_on_onednn(const torch::Tensor& x, at::ScalarType dtype, const nn::Conv2dImpl& conv) {
  return x.device().is_cpu() && x.layout() == at::kStrided && (dtype == at::kFloat || dtype == at::kBFloat16) &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast) && !(torch::GradMode::is_enabled() && x.requires_grad()) &&
         std::holds_alternative<torch::ExpandingArray<2>>(conv.options.padding()) &&
         at::globalContext().userEnabledMkldnn() && onednn_ops().has_value();
}

}  // namespace

FoldedConvBN::Entry& FoldedConvBN::entry(at::ScalarType dtype) {
  for (auto& e : entries_) {
    if (e.dtype == dtype) return e;
  }
  entries_.push_back(Entry{dtype});
  return entries_.back();
}

torch::Tensor FoldedConvBN::onednn_weight(const std::shared_ptr<const Folded>& folded, nn::Conv2dImpl& conv,
                                          at::IntArrayRef input_size) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& e = entry(folded->dtype);
  if (e.onednn_source != folded || input_size != at::IntArrayRef(e.onednn_input_size)) {
    torch::NoGradGuard no_grad;
    const auto& padding = std::get<torch::ExpandingArray<2>>(conv.options.padding());
    e.onednn_weight = onednn_ops()->reorder_weight.call(folded->weight, *padding, *conv.options.stride(),
                                                        *conv.options.dilation(), conv.options.groups(), input_size);
    e.onednn_source = folded;
    e.onednn_input_size = input_size.vec();
  }
  return e.onednn_weight;
}

std::shared_ptr<const FoldedConvBN::Folded> FoldedConvBN::folded(nn::Conv2dImpl& conv, nn::BatchNorm2dImpl& bn,
                                                                 at::ScalarType dtype) {
  const auto sources = sources_of(conv, bn);
  std::lock_guard<std::mutex> lock(mutex_);
  auto& e = entry(dtype);
  if (e.folded && e.folded->eps == bn.options.eps()) {
    bool fresh = true;
    for (size_t i = 0; i < sources.size() && fresh; ++i) {
      const auto& s = e.folded->sources[i];
      fresh = s.tensor.is_same(sources[i]) &&
              (!s.tensor.defined() || (s.version == s.tensor._version() && s.data == s.tensor.const_data_ptr()));
    }
    if (fresh) return e.folded;
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
  e.folded = result;
  return result;
}

torch::Tensor FoldedConvBN::operator()(nn::Conv2dImpl& conv, nn::BatchNorm2dImpl& bn, const torch::Tensor& x) {
  return conv_bn(conv, bn, x, nullptr);
}

torch::Tensor FoldedConvBN::conv_bn(nn::Conv2dImpl& conv, nn::BatchNorm2dImpl& bn, const torch::Tensor& x,
                                    nn::ReLUImpl* relu) {
  const bool foldable = !bn.is_training() && !exact_mode() && bn.running_mean.defined() && x.dim() == 4 &&
                        std::holds_alternative<torch::enumtype::kZeros>(conv.options.padding_mode()) &&
                        !needs_grad(sources_of(conv, bn));
  if (!foldable) {
    if (bn.is_training()) {
      std::lock_guard<std::mutex> lock(mutex_);
      entries_.clear();
    }
    auto out = bn.forward(conv.forward(x));
    return relu ? relu->forward(out) : out;
  }
  const auto dtype = compute_dtype(x, conv.weight);
  const auto f = folded(conv, bn, dtype);
  if (runs_on_onednn(x, dtype, conv)) {
    const auto input = x.to(dtype);
    const auto& padding = std::get<torch::ExpandingArray<2>>(conv.options.padding());
    // The fused ReLU maps NaN to 0 (fast_path.h): fused only where the input is known finite.
    const bool fuse_relu = relu && may_fuse_relu(x);
    auto out = onednn_ops()->convolution.call(input, onednn_weight(f, conv, input.sizes()), f->bias, *padding,
                                              *conv.options.stride(), *conv.options.dilation(), conv.options.groups(),
                                              fuse_relu ? "relu" : "none", c10::List<std::optional<c10::Scalar>>(),
                                              std::nullopt);
    return relu && !fuse_relu ? relu->forward(out) : out;
  }
  auto out = F::detail::conv2d(x, f->weight, f->bias, conv.options.stride(), conv.options.padding(),
                               conv.options.dilation(), conv.options.groups());
  return relu ? relu->forward(out) : out;
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
  if (auto* bn = dynamic_cast<nn::BatchNorm2dImpl*>(norm.ptr().get())) return conv_bn(conv, *bn, x, nullptr);
  return norm(conv.forward(x));
}

size_t FoldedConvBN::run_layers(const std::vector<std::shared_ptr<nn::Module>>& modules, size_t i, size_t max_count,
                                torch::Tensor& x) {
  const size_t end = std::min(modules.size(), i + max_count);
  auto* conv = i + 1 < end ? modules[i]->as<nn::Conv2dImpl>() : nullptr;
  auto* bn = conv ? modules[i + 1]->as<nn::BatchNorm2dImpl>() : nullptr;
  if (!bn) return 0;
  auto* relu = i + 2 < end ? modules[i + 2]->as<nn::ReLUImpl>() : nullptr;
  x = conv_bn(*conv, *bn, x, relu);
  return relu ? 3 : 2;
}

torch::Tensor FoldedConvBN::with_relu(nn::Conv2dImpl& conv, const Norm2d& norm, nn::ReLUImpl& relu,
                                      const torch::Tensor& x) {
  if (auto* bn = dynamic_cast<nn::BatchNorm2dImpl*>(norm.ptr().get())) return conv_bn(conv, *bn, x, &relu);
  return relu.forward(norm(conv.forward(x)));
}

}  // namespace torchtl::models
