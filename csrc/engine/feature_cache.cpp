#include "engine/feature_cache.h"

namespace torchtl::engine {

bool FeatureCache::covers(const data::ThreadedLoader& loader, uint64_t epoch) const {
  if (entries_.empty()) return false;
  for (const auto& batch : loader.batch_indices(epoch)) {
    for (auto i : batch) {
      if (!entries_.count(i)) return false;
    }
  }
  return true;
}

void FeatureCache::store(const std::vector<int64_t>& indices, const torch::Tensor& features,
                         const torch::Tensor& targets) {
  for (size_t k = 0; k < indices.size(); ++k) entries_[indices[k]] = {features[k], targets[k]};
}

std::pair<torch::Tensor, torch::Tensor> FeatureCache::batch(const std::vector<int64_t>& indices) const {
  std::vector<torch::Tensor> features, targets;
  for (auto i : indices) {
    const auto& entry = entries_.at(i);
    features.push_back(entry.first);
    targets.push_back(entry.second);
  }
  return {torch::stack(features), torch::stack(targets)};
}

}  // namespace torchtl::engine
