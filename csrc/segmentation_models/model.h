#pragma once
// segmentation_models_pytorch's SegmentationModel (base/model.py): encoder -> decoder ->
// segmentation_head, and a classification_head on the deepest features when aux_params are given.
// Returns the masks, or the masks and the labels.
#include <torch/nn.h>

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "models/module_tree.h"
#include "segmentation_models/encoder.h"
#include "segmentation_models/modules.h"

namespace torchtl::segmentation_models {

// A decoder: the encoder's features in, one feature map out.
class FeatureDecoder {
 public:
  virtual ~FeatureDecoder() = default;
  virtual torch::Tensor decode(const std::vector<torch::Tensor>& features) = 0;
};

// The arguments every architecture shares, named as smp's constructors name them.
struct CommonOptions {
  TORCH_ARG(std::string, encoder_name) = "resnet34";
  TORCH_ARG(int64_t, encoder_depth) = 5;
  // Whether encoder weights will be loaded after construction (smp's encoder_weights is not None):
  // it changes what in_channels != 3 draws.
  TORCH_ARG(bool, encoder_pretrained) = false;
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(int64_t, classes) = 1;
  TORCH_ARG(std::optional<std::string>, activation) = std::nullopt;
  TORCH_ARG(std::optional<ClassificationHeadOptions>, aux_params) = std::nullopt;
};

class SegmentationModelImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  // {masks} or {masks, labels}; the input in the caller's layout, the fast path inside.
  std::vector<torch::Tensor> forward_all(const torch::Tensor& x);
  // The masks alone (a plain call with aux_params returns both: see forward_all).
  torch::Tensor forward(const torch::Tensor& x) { return forward_all(x).front(); }
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  ResNetEncoder encoder{nullptr};
  std::shared_ptr<torch::nn::Module> decoder;
  SegmentationHead segmentation_head{nullptr};
  ClassificationHead classification_head{nullptr};

 protected:
  // Registers the children in smp's order; then, where smp's model calls initialize() (all but
  // DeepLabV3Plus), the decoder and the heads draw smp's initialisation.
  void build(const CommonOptions& common, ResNetEncoder encoder, std::shared_ptr<torch::nn::Module> decoder,
             SegmentationHead head, bool initialize = true);
  // smp's requires_divisible_input_shape: False for U-Net and UNet++.
  bool requires_divisible_input_shape_ = true;

 private:
  FeatureDecoder* decode_ = nullptr;
  models::TensorForward head_, classification_forward_;
};

// Constructor arguments by smp's names, for building a model from a name and a dict (a model file,
// a command line): bool, int, float, string or a list of ints.
using Argument = std::variant<bool, int64_t, double, std::string, std::vector<int64_t>>;
using Arguments = std::map<std::string, Argument>;

// Builds architecture `arch` ("Unet", "FPN", ...; architecture_names()) from smp's arguments.
// aux_params comes as "aux_params.classes", "aux_params.pooling", ... Unknown names throw.
std::shared_ptr<SegmentationModelImpl> make_model(const std::string& arch, const Arguments& arguments);
const std::vector<std::string>& architecture_names();

}  // namespace torchtl::segmentation_models
