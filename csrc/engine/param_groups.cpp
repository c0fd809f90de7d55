#include "engine/param_groups.h"

namespace torchtl::engine {

namespace {

template <typename Optimizer, typename Options, typename Configure>
std::unique_ptr<torch::optim::Optimizer> build(const std::vector<ParamGroup>& groups, Configure configure) {
  std::vector<torch::optim::OptimizerParamGroup> out;
  for (const auto& g : groups) {
    if (g.params.empty()) continue;
    auto options = std::make_unique<Options>(g.lr);
    configure(*options, g);
    out.emplace_back(g.params, std::move(options));
  }
  TORCH_CHECK_VALUE(!out.empty(), "no parameter requires grad: nothing to train");
  Options defaults(groups.front().lr);
  configure(defaults, groups.front());
  return std::make_unique<Optimizer>(std::move(out), defaults);
}

}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& kind, const std::vector<ParamGroup>& groups) {
  TORCH_CHECK_VALUE(!groups.empty(), "no parameter requires grad: nothing to train");
  if (kind == "sgd") {
    return build<torch::optim::SGD, torch::optim::SGDOptions>(groups, [](auto& o, const ParamGroup& g) {
      o.momentum(g.momentum).dampening(g.dampening).nesterov(g.nesterov).weight_decay(g.weight_decay);
    });
  }
  if (kind == "adam") {
    return build<torch::optim::Adam, torch::optim::AdamOptions>(groups, [](auto& o, const ParamGroup& g) {
      o.betas({g.beta1, g.beta2}).eps(g.eps).weight_decay(g.weight_decay).amsgrad(g.amsgrad);
    });
  }
  if (kind == "adamw") {
    return build<torch::optim::AdamW, torch::optim::AdamWOptions>(groups, [](auto& o, const ParamGroup& g) {
      o.betas({g.beta1, g.beta2}).eps(g.eps).weight_decay(g.weight_decay).amsgrad(g.amsgrad);
    });
  }
  if (kind == "rmsprop") {
    return build<torch::optim::RMSprop, torch::optim::RMSpropOptions>(groups, [](auto& o, const ParamGroup& g) {
      o.alpha(g.alpha).eps(g.eps).weight_decay(g.weight_decay).momentum(g.momentum).centered(g.centered);
    });
  }
  TORCH_CHECK_VALUE(false, "unknown optimizer '", kind, "'; choose sgd, adam or adamw (or pass a torch.optim ",
                    "SGD, Adam, AdamW or RMSprop instance)");
}

}  // namespace torchtl::engine
