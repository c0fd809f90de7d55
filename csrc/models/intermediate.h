#pragma once
// torchvision.models._utils.IntermediateLayerGetter for any module whose children run in order
// (a ResNet, a Sequential, ...): children after the last returned layer are dropped.
#include <torch/nn.h>

#include <string>
#include <utility>
#include <vector>

#include "models/fold_bn.h"
#include "models/module_tree.h"

namespace torchtl::models {

// {"layer4": "out", "layer3": "aux"}: child name -> key in the output, in insertion order.
using ReturnLayers = std::vector<std::pair<std::string, std::string>>;

class IntermediateLayerGetterImpl : public torch::nn::Module, public EditableContainer {
 public:
  // The children are shared with `model`, as in torchvision.
  IntermediateLayerGetterImpl(const std::shared_ptr<torch::nn::Module>& model, ReturnLayers return_layers);
  torch::OrderedDict<std::string, torch::Tensor> forward(torch::Tensor x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override;
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  const ReturnLayers& return_layers() const { return return_layers_; }

 private:
  ReturnLayers return_layers_;
  std::vector<std::string> names_;
  std::vector<TensorForward> forwards_;  // resolved once, so forward() needs no casts
  std::vector<FoldedConvBN> folds_;      // one per child: where a folded convolution starts
  bool returned(const std::string& name) const;
};
TORCH_MODULE(IntermediateLayerGetter);

}  // namespace torchtl::models
