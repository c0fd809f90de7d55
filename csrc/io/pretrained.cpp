#include "io/pretrained.h"

#include <algorithm>
#include <unordered_map>

namespace torchtl::io {

namespace {

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

}  // namespace

StateDict strip_module_prefix(StateDict weights) {
  static const std::string prefix = "module.";
  const bool prefixed = !weights.empty() && std::all_of(weights.begin(), weights.end(), [](const auto& w) {
    return starts_with(w.first, prefix);
  });
  if (!prefixed) return weights;
  for (auto& w : weights) w.first.erase(0, prefix.size());
  return weights;
}

std::optional<int64_t> head_num_classes(const StateDict& weights, const std::string& key) {
  for (const auto& [name, tensor] : weights) {
    if (name == key && tensor.dim() >= 1) return tensor.size(0);
  }
  return std::nullopt;
}

PretrainedResult load_pretrained(torch::nn::Module& model, const StateDict& weights,
                                 const std::vector<std::string>& head_prefixes, bool strict) {
  const auto own = state_dict(model);
  std::unordered_map<std::string, const torch::Tensor*> own_by_name;
  for (const auto& [name, tensor] : own) own_by_name[name] = &tensor;
  PretrainedResult result;
  StateDict kept, fresh;
  for (const auto& [name, tensor] : weights) {
    const auto mine = own_by_name.find(name);
    const bool head = std::any_of(head_prefixes.begin(), head_prefixes.end(),
                                  [&](const std::string& prefix) { return starts_with(name, prefix); });
    if (head && mine != own_by_name.end() && mine->second->sizes() != tensor.sizes()) {
      result.reinitialised.push_back(name);
      fresh.emplace_back(name, *mine->second);
    } else {
      kept.emplace_back(name, tensor);
    }
  }
  kept.insert(kept.end(), fresh.begin(), fresh.end());
  auto loaded = load_state_dict(model, kept, strict);
  result.missing_keys = std::move(loaded.missing_keys);
  result.unexpected_keys = std::move(loaded.unexpected_keys);
  return result;
}

}  // namespace torchtl::io
