#include "engine/weight_decay.h"

#include <functional>
#include <string>

#include "models/sync_batch_norm.h"

namespace torchtl::engine {

bool is_norm_layer(const torch::nn::Module& module) {
  const auto* m = &module;
  return dynamic_cast<const torch::nn::BatchNorm1dImpl*>(m) || dynamic_cast<const torch::nn::BatchNorm2dImpl*>(m) ||
         dynamic_cast<const torch::nn::BatchNorm3dImpl*>(m) || dynamic_cast<const models::SyncBatchNormImpl*>(m) ||
         dynamic_cast<const torch::nn::LayerNormImpl*>(m) || dynamic_cast<const torch::nn::GroupNormImpl*>(m) ||
         dynamic_cast<const torch::nn::InstanceNorm1dImpl*>(m) ||
         dynamic_cast<const torch::nn::InstanceNorm2dImpl*>(m) ||
         dynamic_cast<const torch::nn::InstanceNorm3dImpl*>(m) ||
         dynamic_cast<const torch::nn::LocalResponseNormImpl*>(m);
}

std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>> split_normalization_params(
    const torch::nn::Module& model) {
  std::vector<torch::Tensor> norm, other;
  auto trainable = [](const std::vector<torch::Tensor>& params, std::vector<torch::Tensor>& into) {
    for (const auto& p : params) {
      if (p.requires_grad()) into.push_back(p);
    }
  };
  // model.modules(): the model first, then every submodule depth-first. A module with children
  // gives only its own parameters; a leaf gives its parameters to norm or other by class.
  std::function<void(const torch::nn::Module&)> visit = [&](const torch::nn::Module& module) {
    if (!module.children().empty()) {
      trainable(module.parameters(/*recurse=*/false), other);
    } else {
      trainable(module.parameters(), is_norm_layer(module) ? norm : other);
    }
    for (const auto& child : module.children()) visit(*child);
  };
  visit(model);
  return {norm, other};
}

std::vector<ParamGroup> weight_decay_groups(const torch::nn::Module& model, double weight_decay,
                                            std::optional<double> norm_weight_decay,
                                            std::optional<double> bias_weight_decay, const ParamGroup& like) {
  std::vector<torch::Tensor> other, norm, bias;
  // utils.set_weight_decay's _add_params: a module's own parameters, then its children's. The
  // custom key "bias" has no dot, so it matches the parameter's own name in any module (norm
  // layers' biases included) before the norm rule is asked.
  std::function<void(const torch::nn::Module&)> add = [&](const torch::nn::Module& module) {
    for (const auto& item : module.named_parameters(/*recurse=*/false)) {
      const auto& p = item.value();
      if (!p.requires_grad()) continue;
      if (bias_weight_decay && item.key() == "bias") {
        bias.push_back(p);
      } else if (norm_weight_decay && is_norm_layer(module)) {
        norm.push_back(p);
      } else {
        other.push_back(p);
      }
    }
    for (const auto& child : module.children()) add(*child);
  };
  add(model);
  std::vector<ParamGroup> groups;
  auto push = [&](std::vector<torch::Tensor> params, double decay) {
    if (params.empty()) return;
    ParamGroup group = like;
    group.params = std::move(params);
    group.weight_decay = decay;
    groups.push_back(std::move(group));
  };
  push(std::move(other), weight_decay);
  if (norm_weight_decay) push(std::move(norm), *norm_weight_decay);
  if (bias_weight_decay) push(std::move(bias), *bias_weight_decay);
  return groups;
}

std::vector<ParamGroup> fit_optimizer_groups(const FitOptions& o, torch::nn::Module& model,
                                             const std::vector<torch::Tensor>& trainable,
                                             std::vector<torch::Tensor> body, std::vector<torch::Tensor> head) {
  const bool split = o.norm_weight_decay() >= 0 || o.bias_weight_decay() >= 0;
  if (!o.param_groups().empty()) {
    TORCH_CHECK_VALUE(!split, "norm_weight_decay and bias_weight_decay split the string form's parameters; a ",
                      "torch.optim optimizer handed over keeps its own groups (build them with the split instead)");
    return given_optimizer_groups(o.param_groups(), model, trainable);
  }
  auto named = named_optimizer_groups(o.optimizer(), o.lr(), o.head_lr(), o.momentum(), o.nesterov(), o.weight_decay(),
                                      std::move(body), std::move(head));
  if (!split) return named;
  TORCH_CHECK_VALUE(o.head_lr() < 0, "head_lr groups the parameters by place and norm_weight_decay/bias_weight_decay ",
                    "by kind; the references' recipe has no head_lr, so give one or the other");
  auto like = named.front();
  auto groups = weight_decay_groups(model, o.weight_decay(),
                                    o.norm_weight_decay() >= 0 ? std::optional<double>(o.norm_weight_decay()) : std::nullopt,
                                    o.bias_weight_decay() >= 0 ? std::optional<double>(o.bias_weight_decay()) : std::nullopt,
                                    like);
  // The split walks the model; the optimizer must step exactly the trainable parameters.
  size_t count = 0;
  for (const auto& g : groups) count += g.params.size();
  TORCH_CHECK(count == trainable.size(), "weight-decay groups hold ", count, " parameters, fit trains ",
              trainable.size());
  return groups;
}

}  // namespace torchtl::engine
