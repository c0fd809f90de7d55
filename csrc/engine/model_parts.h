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
#include "segmentation_models/model.h"

namespace torchtl::engine {

struct ModelParts {
  std::shared_ptr<torch::nn::Module> root;
  models::ResNetImpl* resnet = nullptr;
  models::SegmentationModelImpl* segmentation = nullptr;
  // segmentation_models_pytorch's architectures, which return the masks as one tensor.
  segmentation_models::SegmentationModelImpl* dense = nullptr;
  models::TensorForward forward_any;  // classification: the whole forward of any module

  // Whether the task is segmentation: a torchvision or a segmentation_models_pytorch model.
  bool segments() const { return segmentation != nullptr || dense != nullptr; }
  // The model's outputs as torchvision's segmentation models name them ("out", ["aux"]).
  torch::OrderedDict<std::string, torch::Tensor> segment(const torch::Tensor& x) const;

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
