#pragma once
// segmentation_models_pytorch's PAN (decoders/pan/): a feature pyramid attention block on the
// deepest features, then global attention upsampling blocks down to stride 4.
#include <torch/nn.h>

#include <string>
#include <vector>

#include "segmentation_models/model.h"

namespace torchtl::segmentation_models {

// Conv2d (with bias) -> BatchNorm2d -> optional ReLU -> optional 2x bilinear upsampling; smp
// registers the ReLU ("activation") before the norm ("bn").
class ConvBnReluImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  ConvBnReluImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t padding = 0,
                 bool add_relu = true);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  torch::nn::Conv2d conv{nullptr};
  torch::nn::ReLU activation{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  bool add_relu;
};
TORCH_MODULE(ConvBnRelu);

class FPABlockImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  FPABlockImpl(int64_t in_channels, int64_t out_channels);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  torch::nn::Sequential branch1{nullptr}, mid{nullptr}, down1{nullptr}, down2{nullptr}, down3{nullptr};
  ConvBnRelu conv2{nullptr}, conv1{nullptr};
};
TORCH_MODULE(FPABlock);

class GAUBlockImpl : public torch::nn::Module {
 public:
  GAUBlockImpl(int64_t in_channels, int64_t out_channels, std::string interpolation_mode);
  // x: the low-level features, y: the high-level ones.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& y);

  torch::nn::Sequential conv1{nullptr};
  ConvBnRelu conv2{nullptr};
  std::string interpolation_mode;
};
TORCH_MODULE(GAUBlock);

class PANDecoderImpl : public torch::nn::Module, public FeatureDecoder {
 public:
  PANDecoderImpl(const std::vector<int64_t>& encoder_channels, int64_t encoder_depth, int64_t decoder_channels,
                 const std::string& interpolation_mode);
  torch::Tensor decode(const std::vector<torch::Tensor>& features) override;

  FPABlock fpa{nullptr};
  GAUBlock gau3{nullptr}, gau2{nullptr}, gau1{nullptr};
};
TORCH_MODULE(PANDecoder);

struct PANOptions : CommonOptions {
  TORCH_ARG(int64_t, encoder_output_stride) = 16;
  TORCH_ARG(int64_t, decoder_channels) = 32;
  TORCH_ARG(std::string, decoder_interpolation) = "bilinear";
  TORCH_ARG(int64_t, upsampling) = 4;
};

class PANImpl : public SegmentationModelImpl {
 public:
  explicit PANImpl(const PANOptions& options);
};
TORCH_MODULE(PAN);

}  // namespace torchtl::segmentation_models
