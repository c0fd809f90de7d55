#pragma once
// torchvision's weight-decay parameter groups: torchvision.ops._utils.split_normalization_params
// (norm layers' parameters apart from the rest) and references/classification/utils.set_weight_decay
// (--weight-decay, --norm-weight-decay, --bias-weight-decay), over a C++ module tree, with the
// same tensors in the same order as the Python functions give on the module's torch.nn face.
#include <torch/torch.h>

#include <optional>
#include <utility>
#include <vector>

#include "engine/optimizer.h"
#include "engine/options.h"

namespace torchtl::engine {

// torchvision's default norm_classes: _BatchNorm (BatchNorm1d/2d/3d, SyncBatchNorm), LayerNorm,
// GroupNorm, _InstanceNorm, LocalResponseNorm, as their LibTorch classes and torchtl's SyncBatchNorm.
bool is_norm_layer(const torch::nn::Module& module);

// split_normalization_params(model): (norm_params, other_params), trainable ones only, walking
// model.modules() as torchvision does.
std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>> split_normalization_params(
    const torch::nn::Module& model);

// utils.set_weight_decay(model, weight_decay, norm_weight_decay, custom_keys_weight_decay) as
// train.py calls it: custom keys [("bias", bias_weight_decay)] when bias_weight_decay is given.
// Groups "other", "norm", "bias" in that order, empty ones left out; each a copy of `like` with
// its params and weight_decay set.
std::vector<ParamGroup> weight_decay_groups(const torch::nn::Module& model, double weight_decay,
                                            std::optional<double> norm_weight_decay,
                                            std::optional<double> bias_weight_decay, const ParamGroup& like = {});

// fit()'s optimizer groups: options.param_groups() as handed over; else, when norm_weight_decay or
// bias_weight_decay is set (>= 0), weight_decay_groups over the trainable parameters at lr; else
// `body` at lr and `head` at head_lr. `trainable` are the parameters the optimizer steps.
std::vector<ParamGroup> fit_optimizer_groups(const FitOptions& options, torch::nn::Module& model,
                                             const std::vector<torch::Tensor>& trainable,
                                             std::vector<torch::Tensor> body, std::vector<torch::Tensor> head);

}  // namespace torchtl::engine
