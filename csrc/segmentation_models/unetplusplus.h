#pragma once
// segmentation_models_pytorch's UnetPlusPlus (decoders/unetplusplus/): nested, densely connected
// U-Net decoder blocks x_<depth>_<layer>, held in a ModuleDict as smp names them.
#include <torch/nn.h>

#include <optional>
#include <string>
#include <vector>

#include "segmentation_models/model.h"
#include "segmentation_models/unet.h"

namespace torchtl::segmentation_models {

// U-Net's block, upsampling by 2 (smp's scale_factor=2.0) instead of to a given size.
class UnetPlusPlusDecoderBlockImpl : public UnetDecoderBlockImpl {
 public:
  using UnetDecoderBlockImpl::UnetDecoderBlockImpl;
  // skip is undefined for the last block.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& skip);
};
TORCH_MODULE(UnetPlusPlusDecoderBlock);

class UnetPlusPlusDecoderImpl : public torch::nn::Module, public FeatureDecoder {
 public:
  UnetPlusPlusDecoderImpl(const std::vector<int64_t>& encoder_channels, const std::vector<int64_t>& decoder_channels,
                          int64_t n_blocks, DecoderNorm norm, const std::optional<std::string>& attention_type,
                          const std::string& interpolation_mode);
  torch::Tensor decode(const std::vector<torch::Tensor>& features) override;

  torch::nn::Identity center{nullptr};
  torch::nn::ModuleDict blocks{nullptr};

 private:
  UnetPlusPlusDecoderBlockImpl& block(int64_t depth_idx, int64_t layer_idx);
  int64_t depth_ = 0;
  size_t layers_ = 0;  // len(in_channels) in smp
};
TORCH_MODULE(UnetPlusPlusDecoder);

struct UnetPlusPlusOptions : CommonOptions {
  TORCH_ARG(std::string, decoder_use_norm) = "batchnorm";
  TORCH_ARG(std::vector<int64_t>, decoder_channels) = std::vector<int64_t>{256, 128, 64, 32, 16};
  TORCH_ARG(std::optional<std::string>, decoder_attention_type) = std::nullopt;
  TORCH_ARG(std::string, decoder_interpolation) = "nearest";
};

class UnetPlusPlusImpl : public SegmentationModelImpl {
 public:
  explicit UnetPlusPlusImpl(const UnetPlusPlusOptions& options);
};
TORCH_MODULE(UnetPlusPlus);

}  // namespace torchtl::segmentation_models
