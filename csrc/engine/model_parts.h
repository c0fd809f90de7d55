#pragma once
// The model as the loops see it: the whole forward for its task and, for feature extraction, the
// frozen part and the heads separately.
#include <torch/torch.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "models/module_tree.h"
#include "models/resnet.h"
#include "models/segmentation.h"

namespace torchtl::engine {

struct ModelParts {
  std::shared_ptr<torch::nn::Module> root;
  models::ResNetImpl* resnet = nullptr;
  models::SegmentationModelImpl* segmentation = nullptr;
  models::TensorForward forward_any;  // classification: the whole forward of any module

  // Throws unless `task` ("classification" or "segmentation") fits the model.
  ModelParts(const std::shared_ptr<torch::nn::Module>& model, const std::string& task);

  // The classifier heads: the only modules that train in feature_extractor mode, and the
  // head_lr parameter group in every mode. Empty for models torchtl does not know the head of.
  std::vector<std::shared_ptr<torch::nn::Module>> heads() const;
  // Whether every parameter and floating-point buffer is finite (a model that may be the best).
  bool all_finite() const;
};

// The parameters of `modules`, by identity.
std::set<const c10::TensorImpl*> parameters_of(const std::vector<std::shared_ptr<torch::nn::Module>>& modules);

}  // namespace torchtl::engine
