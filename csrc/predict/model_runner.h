#pragma once
// What a Predictor runs its batches through. The eager runner here runs a torchtl module loaded
// from a model file; another runner (an AOTInductor package, say) only has to turn a
// preprocessed batch into logits.
#include <torch/types.h>

#include <memory>
#include <string>

#include "io/load_model.h"

namespace torchtl::predict {

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  // float32 N x 3 x H x W, normalised, on device() -> the logits: N x classes for classification,
  // N x classes x H x W (at the batch's size) for segmentation.
  virtual torch::Tensor forward(const torch::Tensor& batch) = 0;
  virtual torch::Device device() const = 0;
};

// A LoadedModel in eval mode under no_grad on `device`; the fast path or exact mode as the
// calling thread sets it (models/fast_path.h).
class ModuleRunner : public ModelRunner {
 public:
  ModuleRunner(LoadedModel model, torch::Device device);
  torch::Tensor forward(const torch::Tensor& batch) override;
  torch::Device device() const override { return device_; }
  const LoadedModel& model() const { return model_; }

 private:
  LoadedModel model_;
  torch::Device device_;
};

}  // namespace torchtl::predict
