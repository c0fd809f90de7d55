#include "predict/model_runner.h"

#include <torch/torch.h>

namespace torchtl::predict {

ModuleRunner::ModuleRunner(LoadedModel model, torch::Device device) : model_(std::move(model)), device_(device) {
  model_.module->to(device_);
  model_.module->eval();
}

torch::Tensor ModuleRunner::forward(const torch::Tensor& batch) {
  torch::NoGradGuard no_grad;
  return model_.forward(batch.to(device_));
}

}  // namespace torchtl::predict
