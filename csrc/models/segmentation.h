#pragma once
// torchvision.models.segmentation's FCN and DeepLabV3 (deeplabv3.py, fcn.py, _utils.py) on the
// LibTorch C++ frontend, with torchvision's module names so state dicts are interchangeable.
#include <torch/nn.h>

#include <string>

#include "models/intermediate.h"
#include "models/module_tree.h"

namespace torchtl::models {

// torchvision's heads subclass nn.Sequential; so do these (same child names "0", "1", ...).
class ASPPConvImpl : public torch::nn::SequentialImpl {
 public:
  ASPPConvImpl(int64_t in_channels, int64_t out_channels, int64_t dilation);
};
TORCH_MODULE(ASPPConv);

class ASPPPoolingImpl : public torch::nn::SequentialImpl, public EditableContainer {
 public:
  ASPPPoolingImpl(int64_t in_channels, int64_t out_channels);
  // Global pooling, then back to the input's spatial size (bilinear, align_corners=false).
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;
};
TORCH_MODULE(ASPPPooling);

class ASPPImpl : public torch::nn::Module, public EditableContainer {
 public:
  ASPPImpl(int64_t in_channels, std::vector<int64_t> atrous_rates, int64_t out_channels = 256);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  torch::nn::ModuleList convs{nullptr};
  torch::nn::Sequential project{nullptr};

 private:
  std::vector<TensorForward> branches_;
  TensorForward project_forward_;
};
TORCH_MODULE(ASPP);

class DeepLabHeadImpl : public torch::nn::SequentialImpl {
 public:
  DeepLabHeadImpl(int64_t in_channels, int64_t num_classes, std::vector<int64_t> atrous_rates = {12, 24, 36});
};
TORCH_MODULE(DeepLabHead);

class FCNHeadImpl : public torch::nn::SequentialImpl {
 public:
  FCNHeadImpl(int64_t in_channels, int64_t channels);
};
TORCH_MODULE(FCNHead);

// torchvision's _SimpleSegmentationModel: backbone features -> classifier (and aux_classifier on
// the "aux" features), each upsampled to the input size. Returns {"out", ["aux"]}.
class SegmentationModelImpl : public torch::nn::Module, public EditableContainer {
 public:
  SegmentationModelImpl(IntermediateLayerGetter backbone, std::shared_ptr<torch::nn::Module> classifier,
                        std::shared_ptr<torch::nn::Module> aux_classifier = nullptr);
  torch::OrderedDict<std::string, torch::Tensor> forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override;
  // forward() after the backbone: the heads on its features, upsampled to `size` (H, W).
  torch::OrderedDict<std::string, torch::Tensor> forward_heads(const torch::OrderedDict<std::string, torch::Tensor>& features,
                                                               at::IntArrayRef size);
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  IntermediateLayerGetter backbone{nullptr};
  std::shared_ptr<torch::nn::Module> classifier, aux_classifier;

 private:
  TensorForward classifier_forward_, aux_forward_;
};

// Named as torchvision's classes, so reprs and error messages read the same.
class DeepLabV3Impl : public SegmentationModelImpl {
 public:
  using SegmentationModelImpl::SegmentationModelImpl;
};
TORCH_MODULE(DeepLabV3);

class FCNImpl : public SegmentationModelImpl {
 public:
  using SegmentationModelImpl::SegmentationModelImpl;
};
TORCH_MODULE(FCN);

// torchvision's builders: backbone "resnet50" or "resnet101" with replace_stride_with_dilation
// {false, true, true}; the aux head (an FCNHead on layer3) when aux_loss.
DeepLabV3 deeplabv3_resnet(const std::string& backbone, int64_t num_classes = 21, bool aux_loss = false);
FCN fcn_resnet(const std::string& backbone, int64_t num_classes = 21, bool aux_loss = false);

}  // namespace torchtl::models
