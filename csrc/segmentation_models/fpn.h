#pragma once
// segmentation_models_pytorch's FPN (decoders/fpn/): a feature pyramid over the encoder's last four
// stages, each level upsampled to stride 4 by GroupNorm convolutions and merged.
#include <torch/nn.h>

#include <string>
#include <vector>

#include "segmentation_models/model.h"

namespace torchtl::segmentation_models {

// Conv3x3 -> GroupNorm(32) -> ReLU, then optionally 2x bilinear upsampling.
class Conv3x3GNReLUImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  Conv3x3GNReLUImpl(int64_t in_channels, int64_t out_channels, bool upsample = false);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  bool upsample;
  torch::nn::Sequential block{nullptr};
};
TORCH_MODULE(Conv3x3GNReLU);

class FPNBlockImpl : public torch::nn::Module {
 public:
  FPNBlockImpl(int64_t pyramid_channels, int64_t skip_channels, std::string interpolation_mode);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& skip);

  torch::nn::Conv2d skip_conv{nullptr};
  std::string interpolation_mode;
};
TORCH_MODULE(FPNBlock);

class SegmentationBlockImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  SegmentationBlockImpl(int64_t in_channels, int64_t out_channels, int64_t n_upsamples = 0);
  torch::Tensor forward(const torch::Tensor& x) { return block->forward(x); }
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  torch::nn::Sequential block{nullptr};
};
TORCH_MODULE(SegmentationBlock);

// "add" (sum of the levels) or "cat" (concatenated channels); no parameters.
class MergeBlockImpl : public torch::nn::Module {
 public:
  explicit MergeBlockImpl(std::string policy);
  torch::Tensor forward(const std::vector<torch::Tensor>& x);

  std::string policy;
};
TORCH_MODULE(MergeBlock);

class FPNDecoderImpl : public torch::nn::Module, public FeatureDecoder {
 public:
  FPNDecoderImpl(const std::vector<int64_t>& encoder_channels, int64_t encoder_depth, int64_t pyramid_channels,
                 int64_t segmentation_channels, double dropout, const std::string& merge_policy,
                 const std::string& interpolation_mode);
  torch::Tensor decode(const std::vector<torch::Tensor>& features) override;
  int64_t out_channels() const { return out_channels_; }

  torch::nn::Conv2d p5{nullptr};
  FPNBlock p4{nullptr}, p3{nullptr}, p2{nullptr};
  torch::nn::ModuleList seg_blocks{nullptr};
  MergeBlock merge{nullptr};
  torch::nn::Dropout2d dropout{nullptr};

 private:
  int64_t out_channels_;
};
TORCH_MODULE(FPNDecoder);

struct FPNOptions : CommonOptions {
  TORCH_ARG(int64_t, decoder_pyramid_channels) = 256;
  TORCH_ARG(int64_t, decoder_segmentation_channels) = 128;
  TORCH_ARG(std::string, decoder_merge_policy) = "add";
  TORCH_ARG(double, decoder_dropout) = 0.2;
  TORCH_ARG(std::string, decoder_interpolation) = "nearest";
  TORCH_ARG(int64_t, upsampling) = 4;
};

class FPNImpl : public SegmentationModelImpl {
 public:
  explicit FPNImpl(const FPNOptions& options);
};
TORCH_MODULE(FPN);

}  // namespace torchtl::segmentation_models
