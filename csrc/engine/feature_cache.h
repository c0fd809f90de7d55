#pragma once
// feature_extractor mode over deterministic data: the frozen backbone's features of each sample
// never change, so they are computed once (with the sample's target) and the head trains and
// evaluates on them afterwards.
#include <torch/torch.h>

#include <unordered_map>
#include <utility>
#include <vector>

#include "data/loader.h"

namespace torchtl::engine {

class FeatureCache {
 public:
  // Whether the cache holds every sample of `loader`'s epoch (a rank's shard changes every epoch).
  bool covers(const data::ThreadedLoader& loader, uint64_t epoch) const;
  // Keeps row k of `features` and `targets` as dataset sample indices[k].
  void store(const std::vector<int64_t>& indices, const torch::Tensor& features, const torch::Tensor& targets);
  // The features and targets of these samples, stacked into a batch.
  std::pair<torch::Tensor, torch::Tensor> batch(const std::vector<int64_t>& indices) const;

 private:
  std::unordered_map<int64_t, std::pair<torch::Tensor, torch::Tensor>> entries_;
};

}  // namespace torchtl::engine
