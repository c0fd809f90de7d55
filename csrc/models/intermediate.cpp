#include "models/intermediate.h"

#include <algorithm>
#include <set>

#include "models/fast_path.h"

namespace torchtl::models {

IntermediateLayerGetterImpl::IntermediateLayerGetterImpl(const std::shared_ptr<torch::nn::Module>& model,
                                                         ReturnLayers return_layers)
    : return_layers_(std::move(return_layers)) {
  TORCH_CHECK_VALUE(model != nullptr, "IntermediateLayerGetter needs a model");
  std::set<std::string> pending;
  for (const auto& [name, key] : return_layers_) pending.insert(name);
  for (const auto& child : model->named_children()) {
    if (pending.empty()) break;
    register_module(child.key(), child.value());
    names_.push_back(child.key());
    forwards_.push_back(tensor_forward(child.value()));
    folds_.emplace_back();
    pending.erase(child.key());
  }
  if (!pending.empty()) {
    std::string missing;
    for (const auto& name : pending) missing += (missing.empty() ? "" : ", ") + name;
    TORCH_CHECK_VALUE(false, "return_layers are not present in model: ", missing);
  }
}

torch::OrderedDict<std::string, torch::Tensor> IntermediateLayerGetterImpl::forward(torch::Tensor input) {
  torch::OrderedDict<std::string, torch::Tensor> out;
  FiniteInputScope finite_input(input);
  auto x = to_fast_layout(input);
  const auto layers = children();
  for (size_t i = 0; i < forwards_.size();) {
    // A stem's conv1, bn1 and relu run as one folded convolution, unless a layer inside the run
    // is returned on its own.
    size_t max_count = 1;
    while (i + max_count < forwards_.size() && !returned(names_[i + max_count - 1])) ++max_count;
    size_t ran = folds_[i].run_layers(layers, i, max_count, x);
    if (ran == 0) {
      x = forwards_[i](x);
      ran = 1;
    }
    i += ran;
    for (const auto& [name, key] : return_layers_) {
      if (name == names_[i - 1]) out.insert(key, to_caller_layout(x, input));
    }
  }
  return out;
}

bool IntermediateLayerGetterImpl::returned(const std::string& name) const {
  return std::any_of(return_layers_.begin(), return_layers_.end(), [&](const auto& item) { return item.first == name; });
}

torch::Tensor IntermediateLayerGetterImpl::forward_as_tensor(const torch::Tensor&) {
  TORCH_CHECK_TYPE(false, "IntermediateLayerGetter returns a dict of features, not a tensor");
}

void IntermediateLayerGetterImpl::replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) {
  auto it = std::find(names_.begin(), names_.end(), name);
  TORCH_CHECK_VALUE(it != names_.end(), "IntermediateLayerGetter has no child '", name, "'");
  forwards_[it - names_.begin()] = tensor_forward(module);
  replace_module(name, module);
}

}  // namespace torchtl::models
