#pragma once
// segmentation_models_pytorch's ResNetEncoder (encoders/resnet.py): torchvision's ResNet without
// avgpool and fc, returning the input and the features after the stem and after each layer. The
// children keep torchvision's names (conv1, bn1, ..., layer4), so the state dict reads
// encoder.conv1.weight, encoder.layer1.0.conv1.weight, ... as in smp.
#include <torch/nn.h>

#include <string>
#include <vector>

#include "models/fold_bn.h"
#include "models/module_tree.h"
#include "models/norm.h"

namespace torchtl::segmentation_models {

struct ResNetEncoderOptions {
  explicit ResNetEncoderOptions(std::string name) : name_(std::move(name)) {}
  // One of resnet_encoder_names(): smp's ResNet and ResNeXt encoders.
  TORCH_ARG(std::string, name);
  TORCH_ARG(int64_t, in_channels) = 3;
  // How many stages run (1..5): depth d returns d + 1 features. The layers beyond it are still
  // built, as in smp, so the state dict does not depend on the depth.
  TORCH_ARG(int64_t, depth) = 5;
  // 32 (plain), 16 or 8: smp's make_dilated turns the strides of layer4 (and layer3 for 8) into
  // dilation.
  TORCH_ARG(int64_t, output_stride) = 32;
  // Whether pretrained weights will be loaded: then a first convolution for in_channels != 3 is
  // not redrawn (smp adapts the pretrained one instead, which draws nothing).
  TORCH_ARG(bool, pretrained) = false;
};

class ResNetEncoderImpl : public torch::nn::Module {
 public:
  explicit ResNetEncoderImpl(const ResNetEncoderOptions& options);
  // [x, stem, layer1, ..., layer<depth-1>]: depth + 1 tensors.
  std::vector<torch::Tensor> forward(const torch::Tensor& x);
  // Channels of each of forward()'s tensors (smp's encoder.out_channels).
  std::vector<int64_t> out_channels() const;
  // min(output_stride, 2^depth), what the input's height and width must be divisible by.
  int64_t output_stride() const;

  ResNetEncoderOptions options;
  torch::nn::Conv2d conv1{nullptr};
  models::Norm2d bn1;
  torch::nn::ReLU relu{nullptr};
  torch::nn::MaxPool2d maxpool{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};

 private:
  std::vector<int64_t> channels_;
  models::FoldedConvBN fold1_;
  std::vector<models::TensorForward> layers_;
};
TORCH_MODULE(ResNetEncoder);

const std::vector<std::string>& resnet_encoder_names();

}  // namespace torchtl::segmentation_models
