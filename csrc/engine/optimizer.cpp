#include "engine/optimizer.h"

#include <set>

#include "engine/choices.h"

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
  // LibTorch gives a group each field that equals the options' constructor default from the
  // optimizer's defaults. Defaults that are the constructor's own keep every group as given: with
  // the first group's, a later group's weight_decay=0 (norm_weight_decay=0) or momentum=0 became
  // the first group's value.
  Options defaults(groups.front().lr);
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

std::vector<ParamGroup> named_optimizer_groups(const std::string& kind, double lr, double head_lr, double momentum,
                                               bool nesterov, double weight_decay, std::vector<torch::Tensor> body,
                                               std::vector<torch::Tensor> head) {
  check_fit_choice("optimizer", kind, " (or pass a torch.optim SGD, Adam, AdamW or RMSprop instance)");
  ParamGroup g;
  g.lr = lr;
  g.momentum = momentum;
  g.nesterov = nesterov;
  g.weight_decay = weight_decay;
  std::vector<ParamGroup> groups;
  g.params = std::move(body);
  groups.push_back(g);
  g.params = std::move(head);
  g.lr = head_lr >= 0 ? head_lr : lr;
  groups.push_back(g);
  return groups;
}

std::vector<ParamGroup> given_optimizer_groups(const std::vector<ParamGroup>& given, torch::nn::Module& model,
                                               const std::vector<torch::Tensor>& trainable) {
  std::set<const c10::TensorImpl*> all, train;
  for (const auto& p : model.parameters()) all.insert(p.unsafeGetTensorImpl());
  for (const auto& p : trainable) train.insert(p.unsafeGetTensorImpl());
  std::vector<ParamGroup> groups;
  for (size_t g = 0; g < given.size(); ++g) {
    ParamGroup group = given[g];
    group.params.clear();
    for (const auto& p : given[g].params) {
      TORCH_CHECK_VALUE(all.count(p.unsafeGetTensorImpl()), "the optimizer's param group ", g, " holds a tensor of shape ",
                        p.sizes(), " that is not a parameter of the model being trained");
      if (train.count(p.unsafeGetTensorImpl())) group.params.push_back(p);
    }
    groups.push_back(std::move(group));
  }
  return groups;
}

c10::impl::GenericDict optimizer_state(torch::optim::Optimizer& optimizer, const std::vector<std::string>& names,
                                       const std::vector<torch::Tensor>& params) {
  c10::impl::GenericDict out(c10::StringType::get(), c10::AnyType::get());
  auto& state = optimizer.state();
  for (size_t i = 0; i < params.size(); ++i) {
    auto it = state.find(params[i].unsafeGetTensorImpl());
    if (it == state.end()) continue;
    c10::impl::GenericDict entry(c10::StringType::get(), c10::AnyType::get());
    if (auto* sgd = dynamic_cast<torch::optim::SGDParamState*>(it->second.get())) {
      entry.insert("momentum_buffer", sgd->momentum_buffer().cpu());
    } else if (auto* adam = dynamic_cast<torch::optim::AdamParamState*>(it->second.get())) {
      entry.insert("step", adam->step());
      entry.insert("exp_avg", adam->exp_avg().cpu());
      entry.insert("exp_avg_sq", adam->exp_avg_sq().cpu());
      if (adam->max_exp_avg_sq().defined()) entry.insert("max_exp_avg_sq", adam->max_exp_avg_sq().cpu());
    } else if (auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(it->second.get())) {
      entry.insert("step", adamw->step());
      entry.insert("exp_avg", adamw->exp_avg().cpu());
      entry.insert("exp_avg_sq", adamw->exp_avg_sq().cpu());
      if (adamw->max_exp_avg_sq().defined()) entry.insert("max_exp_avg_sq", adamw->max_exp_avg_sq().cpu());
    } else if (auto* rms = dynamic_cast<torch::optim::RMSpropParamState*>(it->second.get())) {
      entry.insert("step", rms->step());
      entry.insert("square_avg", rms->square_avg().cpu());
      if (rms->momentum_buffer().defined()) entry.insert("momentum_buffer", rms->momentum_buffer().cpu());
      if (rms->grad_avg().defined()) entry.insert("grad_avg", rms->grad_avg().cpu());
    }
    out.insert(names[i], entry);
  }
  return out;
}

void restore_optimizer_state(torch::optim::Optimizer& optimizer, const std::string& kind,
                             const c10::impl::GenericDict& saved, const std::vector<std::string>& names,
                             const std::vector<torch::Tensor>& params) {
  auto& state = optimizer.state();
  for (size_t i = 0; i < params.size(); ++i) {
    auto it = saved.find(names[i]);
    if (it == saved.end()) continue;
    auto entry = it->value().toGenericDict();
    auto tensor = [&](const char* key) { return entry.at(key).toTensor().to(params[i].device()); };
    auto optional = [&](const char* key) { return entry.contains(key) ? tensor(key) : torch::Tensor(); };
    void* key = params[i].unsafeGetTensorImpl();
    if (kind == "sgd") {
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(tensor("momentum_buffer"));
      state[key] = std::move(s);
    } else if (kind == "adam") {
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->step(entry.at("step").toInt()).exp_avg(tensor("exp_avg")).exp_avg_sq(tensor("exp_avg_sq"));
      s->max_exp_avg_sq(optional("max_exp_avg_sq"));
      state[key] = std::move(s);
    } else if (kind == "adamw") {
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(entry.at("step").toInt()).exp_avg(tensor("exp_avg")).exp_avg_sq(tensor("exp_avg_sq"));
      s->max_exp_avg_sq(optional("max_exp_avg_sq"));
      state[key] = std::move(s);
    } else {
      auto s = std::make_unique<torch::optim::RMSpropParamState>();
      s->step(entry.at("step").toInt()).square_avg(tensor("square_avg"));
      s->momentum_buffer(optional("momentum_buffer")).grad_avg(optional("grad_avg"));
      state[key] = std::move(s);
    }
  }
}

}  // namespace torchtl::engine
