#pragma once
// segmentation_models_pytorch's DeepLabV3Plus (decoders/deeplabv3/): ASPP on the deepest
// features of a dilated encoder, upsampled and fused with the stride-4 features.
#include <torch/nn.h>

#include <string>
#include <vector>

#include "models/fold_bn.h"
#include "segmentation_models/model.h"

namespace torchtl::segmentation_models {

// A depthwise then a pointwise convolution, children "0" and "1" as smp's nn.Sequential has them.
// A plain Module rather than a Sequential: LibTorch's Sequential cannot hold another Sequential.
class SeparableConv2dImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  SeparableConv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t padding = 0,
                      int64_t dilation = 1, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x) { return pointwise(depthwise(x)); }
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  torch::nn::Conv2d depthwise{nullptr}, pointwise{nullptr};
};
TORCH_MODULE(SeparableConv2d);

// SeparableConv2d (dilated) -> BatchNorm2d -> ReLU.
class ASPPSeparableConvImpl : public torch::nn::SequentialImpl {
 public:
  ASPPSeparableConvImpl(int64_t in_channels, int64_t out_channels, int64_t dilation);
};
TORCH_MODULE(ASPPSeparableConv);

// torchvision's ASPP with smp's options: three rates, separable branches, the projection's dropout.
class ASPPImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  ASPPImpl(int64_t in_channels, int64_t out_channels, const std::vector<int64_t>& atrous_rates, bool separable,
           double dropout);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  torch::nn::ModuleList convs{nullptr};
  torch::nn::Sequential project{nullptr};

 private:
  std::vector<models::TensorForward> branches_;
  models::TensorForward project_;
};
TORCH_MODULE(ASPP);

class DeepLabV3PlusDecoderImpl : public torch::nn::Module, public FeatureDecoder {
 public:
  DeepLabV3PlusDecoderImpl(const std::vector<int64_t>& encoder_channels, int64_t encoder_depth, int64_t out_channels,
                           const std::vector<int64_t>& atrous_rates, int64_t output_stride, bool aspp_separable,
                           double aspp_dropout);
  torch::Tensor decode(const std::vector<torch::Tensor>& features) override;

  torch::nn::Sequential aspp{nullptr};
  torch::nn::Upsample up{nullptr};
  torch::nn::Sequential block1{nullptr}, block2{nullptr};

 private:
  models::TensorForward aspp_, block1_, block2_;
};
TORCH_MODULE(DeepLabV3PlusDecoder);

struct DeepLabV3PlusOptions : CommonOptions {
  TORCH_ARG(int64_t, encoder_output_stride) = 16;
  TORCH_ARG(int64_t, decoder_channels) = 256;
  TORCH_ARG(std::vector<int64_t>, decoder_atrous_rates) = std::vector<int64_t>{12, 24, 36};
  TORCH_ARG(bool, decoder_aspp_separable) = true;
  TORCH_ARG(double, decoder_aspp_dropout) = 0.5;
  TORCH_ARG(int64_t, upsampling) = 4;
};

class DeepLabV3PlusImpl : public SegmentationModelImpl {
 public:
  explicit DeepLabV3PlusImpl(const DeepLabV3PlusOptions& options);
};
TORCH_MODULE(DeepLabV3Plus);

}  // namespace torchtl::segmentation_models
