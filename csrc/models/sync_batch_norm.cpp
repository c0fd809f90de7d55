#include "models/sync_batch_norm.h"

#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include "models/module_tree.h"

namespace torchtl::models {
namespace {

namespace nn = torch::nn;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Every dimension but the channels' (dim 1).
std::vector<int64_t> non_channel_dims(int64_t dim) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < dim; ++d) dims.push_back(d);
  return dims;
}

// A per-channel vector's shape for broadcasting over an input of `dim` dimensions.
std::vector<int64_t> per_channel(int64_t dim) {
  std::vector<int64_t> shape(static_cast<size_t>(dim), 1);
  shape[1] = -1;
  return shape;
}

// Statistics are summed over the whole global batch: in half precision that loses too much, so
// they are kept in float32 at least, as torch's CUDA kernels do.
at::ScalarType statistics_dtype(at::ScalarType input) {
  return input == at::kHalf || input == at::kBFloat16 ? at::kFloat : input;
}

// torch/nn/modules/_functions.py SyncBatchNorm, with the same collectives: forward gathers each
// rank's count, mean and variance; backward all-reduces sum(dy) and sum(dy * (x - mean)).
class SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias, const torch::Tensor& running_mean,
                               const torch::Tensor& running_var, double eps, double momentum,
                               const c10::intrusive_ptr<c10d::ProcessGroup>& group) {
    const int64_t channels = input.size(1);
    const auto shape = per_channel(input.dim());
    const auto x = input.to(statistics_dtype(input.scalar_type()));
    const auto [local_var, local_mean] = torch::var_mean(x, non_channel_dims(input.dim()), /*unbiased=*/false);
    const double local_count = static_cast<double>(input.numel() / channels);

    // Each rank writes (mean, M2, count) into its own row and a sum all-reduce fills in the others:
    // an all-gather in one collective that gloo also has. Chan's parallel variance then combines
    // the rows (torch's batch_norm_gather_stats_with_counts), which a global sum of squares would
    // not do as stably.
    auto table = torch::zeros({group->getSize(), 2 * channels + 1}, x.options());
    table[group->getRank()].copy_(
        torch::cat({local_mean, local_var * local_count, torch::full({1}, local_count, x.options())}));
    std::vector<torch::Tensor> gathered{table};
    group->allreduce(gathered)->wait();
    const auto counts = table.narrow(1, 2 * channels, 1);
    const auto means = table.narrow(1, 0, channels);
    const auto m2s = table.narrow(1, channels, channels);
    const double count = counts.sum().item<double>();
    TORCH_CHECK_VALUE(count > 1, "Expected more than 1 value per channel when training, got ", count,
                      " over all ranks of the process group");
    const auto mean = (means * counts).sum(0) / count;
    const auto m2 = (m2s + counts * (means - mean).square()).sum(0);
    const auto invstd = (m2 / count + eps).rsqrt();

    if (running_mean.defined()) {
      running_mean.mul_(1 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
      running_var.mul_(1 - momentum).add_((m2 / (count - 1)).to(running_var.scalar_type()), momentum);
    }

    ctx->save_for_backward({input, weight, mean, invstd});
    ctx->saved_data["count"] = count;
    ctx->saved_data["group"] = c10::IValue::make_capsule(c10::intrusive_ptr<torch::CustomClassHolder>(group));
    const auto scale = weight.defined() ? invstd * weight.to(invstd.scalar_type()) : invstd;
    auto shift = -mean * scale;
    if (bias.defined()) shift = shift + bias.to(invstd.scalar_type());
    return (x * scale.view(shape) + shift.view(shape)).to(input.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& input = saved[0];
    const auto& weight = saved[1];
    const auto& mean = saved[2];
    const auto& invstd = saved[3];
    const int64_t channels = mean.numel();
    const auto dims = non_channel_dims(input.dim());
    const auto shape = per_channel(input.dim());
    const auto dy = grad_outputs[0].to(mean.scalar_type());
    const auto xmu = input.to(mean.scalar_type()) - mean.view(shape);
    const auto sums = torch::cat({dy.sum(dims), (dy * xmu).sum(dims)});

    // This rank's share of the parameters' gradients: the loop's gradient all-reduce averages
    // them over the ranks, as DistributedDataParallel does for torch's module.
    torch::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(1)) grad_weight = sums.narrow(0, channels, channels) * invstd;
    if (ctx->needs_input_grad(2)) grad_bias = sums.narrow(0, 0, channels).clone();
    if (ctx->needs_input_grad(0)) {
      auto group = c10::static_intrusive_pointer_cast<c10d::ProcessGroup>(ctx->saved_data["group"].toCapsule());
      const double count = ctx->saved_data["count"].toDouble();
      std::vector<torch::Tensor> global{sums.clone()};
      group->allreduce(global)->wait();
      const auto mean_dy = global[0].narrow(0, 0, channels) / count;
      const auto mean_dy_xmu = global[0].narrow(0, channels, channels) / count;
      const auto scale = weight.defined() ? invstd * weight.to(invstd.scalar_type()) : invstd;
      grad_input = ((dy - mean_dy.view(shape) - xmu * (invstd * invstd * mean_dy_xmu).view(shape)) * scale.view(shape))
                       .to(input.scalar_type());
    }
    return {grad_input, grad_weight, grad_bias, {}, {}, {}, {}, {}};
  }
};

}  // namespace

SyncBatchNormImpl::SyncBatchNormImpl(const nn::BatchNormOptions& options_,
                                     c10::intrusive_ptr<c10d::ProcessGroup> process_group_)
    : options(options_), process_group(std::move(process_group_)) {
  reset();
}

SyncBatchNormImpl::SyncBatchNormImpl(const nn::BatchNorm2dImpl& bn, c10::intrusive_ptr<c10d::ProcessGroup> process_group_)
    : options(bn.options), process_group(std::move(process_group_)) {
  register_tensors(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked);
}

void SyncBatchNormImpl::reset() {
  // BatchNorm2d's initial values.
  const auto n = options.num_features();
  torch::Tensor w, b, mean, var, tracked;
  if (options.affine()) {
    w = torch::ones({n}, torch::requires_grad());
    b = torch::zeros({n}, torch::requires_grad());
  }
  if (options.track_running_stats()) {
    mean = torch::zeros({n});
    var = torch::ones({n});
    tracked = torch::tensor(0, torch::kLong);
  }
  register_tensors(w, b, mean, var, tracked);
}

void SyncBatchNormImpl::register_tensors(torch::Tensor w, torch::Tensor b, torch::Tensor mean, torch::Tensor var,
                                         torch::Tensor tracked) {
  // BatchNorm2d's names and order; a frozen parameter stays frozen.
  weight = register_parameter("weight", w, w.defined() && w.requires_grad());
  bias = register_parameter("bias", b, b.defined() && b.requires_grad());
  running_mean = register_buffer("running_mean", mean);
  running_var = register_buffer("running_var", var);
  num_batches_tracked = register_buffer("num_batches_tracked", tracked);
}

torch::Tensor SyncBatchNormImpl::forward(const torch::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() >= 2, "SyncBatchNorm expects at least 2-D input, got ", input.dim(), "-D");
  // BatchNormImplBase::forward's momentum, step for step.
  double factor = options.momentum().value_or(0.0);
  if (is_training() && options.track_running_stats() && num_batches_tracked.defined()) {
    num_batches_tracked += 1;
    if (!options.momentum()) factor = 1.0 / num_batches_tracked.item<double>();
  }
  if (!is_training() || !process_group || process_group->getSize() == 1) {
    return nn::functional::detail::batch_norm(input, running_mean, running_var, weight, bias,
                                              is_training() || !options.track_running_stats(), factor, options.eps());
  }
  return SyncBatchNormFunction::apply(input, weight, bias, running_mean, running_var, options.eps(), factor,
                                      process_group);
}

void SyncBatchNormImpl::pretty_print(std::ostream& stream) const {
  stream << std::boolalpha << "SyncBatchNorm(" << options.num_features() << ", eps=" << options.eps() << ", momentum=";
  if (options.momentum()) {
    stream << *options.momentum();
  } else {
    stream << "None";
  }
  stream << ", affine=" << options.affine() << ", track_running_stats=" << options.track_running_stats() << ")";
}

SyncBatchNormScope::SyncBatchNormScope(nn::Module& model, c10::intrusive_ptr<c10d::ProcessGroup> process_group) {
  // Found first and replaced after: replacing children while walking the tree would change it
  // under the walk.
  std::vector<Swap> found;
  auto visit = [&found](nn::Module& parent) {
    for (const auto& child : parent.named_children()) {
      auto bn = std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(child.value());
      if (bn && bn->is_training()) found.push_back({&parent, child.key(), bn});
    }
  };
  visit(model);
  for (const auto& module : model.modules(/*include_self=*/false)) visit(*module);
  try {
    for (const auto& swap : found) {
      const auto& bn = static_cast<const nn::BatchNorm2dImpl&>(*swap.original);
      replace_child(*swap.parent, swap.name, std::make_shared<SyncBatchNormImpl>(bn, process_group));
      swapped_.push_back(swap);
    }
  } catch (...) {
    restore();
    throw;
  }
}

SyncBatchNormScope::~SyncBatchNormScope() { restore(); }

void SyncBatchNormScope::restore() {
  // The originals stood in these slots before, so putting them back cannot be refused.
  for (auto it = swapped_.rbegin(); it != swapped_.rend(); ++it) replace_child(*it->parent, it->name, it->original);
  swapped_.clear();
}

}  // namespace torchtl::models
