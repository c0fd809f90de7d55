#pragma once
// The optimizer fit() runs: built from explicit parameter groups (the string form of fit's options
// and a torch.optim optimizer handed over from Python both become a list of ParamGroup, so the two
// forms build the very same LibTorch optimizer), and its state written to and read from a
// checkpoint by parameter name.
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

// The string form's groups: `body` at lr, `head` at head_lr (negative: lr), each with momentum,
// nesterov and weight_decay. kind: "sgd", "adam" or "adamw".
std::vector<ParamGroup> named_optimizer_groups(const std::string& kind, double lr, double head_lr, double momentum,
                                               bool nesterov, double weight_decay, std::vector<torch::Tensor> body,
                                               std::vector<torch::Tensor> head);

// Groups handed over from a torch.optim optimizer hold the model's own tensors: each is found
// among the trainable parameters by identity. Frozen ones (feature_extractor) are left out.
std::vector<ParamGroup> given_optimizer_groups(const std::vector<ParamGroup>& given, torch::nn::Module& model,
                                               const std::vector<torch::Tensor>& trainable);

// The optimizer's state by parameter name (torch.optim's per-parameter keys), so a checkpoint is
// readable from Python and resumable.
c10::impl::GenericDict optimizer_state(torch::optim::Optimizer& optimizer, const std::vector<std::string>& names,
                                       const std::vector<torch::Tensor>& params);
// The inverse of optimizer_state for an optimizer of `kind` over the same named parameters.
void restore_optimizer_state(torch::optim::Optimizer& optimizer, const std::string& kind,
                             const c10::impl::GenericDict& saved, const std::vector<std::string>& names,
                             const std::vector<torch::Tensor>& params);

}  // namespace torchtl::engine
