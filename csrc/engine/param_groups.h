#pragma once
// The optimizers fit() runs, built from explicit parameter groups: the string form of fit's
// options and a torch.optim optimizer handed over from Python both become a list of ParamGroup,
// so the two forms build the very same LibTorch optimizer.
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace torchtl::engine {

// One torch.optim parameter group: its tensors (the model's own, not copies) and every
// hyperparameter of the optimizers below, with torch.optim's defaults. Each kind reads its own.
struct ParamGroup {
  std::vector<torch::Tensor> params;
  double lr = 0.01;
  double weight_decay = 0.0;
  double momentum = 0.0;     // sgd, rmsprop
  double dampening = 0.0;    // sgd
  bool nesterov = false;     // sgd
  double beta1 = 0.9;        // adam, adamw
  double beta2 = 0.999;      // adam, adamw
  double eps = 1e-8;         // adam, adamw, rmsprop
  bool amsgrad = false;      // adam, adamw
  double alpha = 0.99;       // rmsprop
  bool centered = false;     // rmsprop
};

// kind: "sgd", "adam", "adamw" or "rmsprop". Groups without parameters are left out.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& kind, const std::vector<ParamGroup>& groups);

}  // namespace torchtl::engine
