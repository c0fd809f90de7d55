#pragma once
// segmentation_models_pytorch's Unet (decoders/unet/): the decoder upsamples the deepest features
// block by block, each block concatenating the encoder's features of its resolution.
#include <torch/nn.h>

#include <optional>
#include <string>
#include <vector>

#include "segmentation_models/model.h"

namespace torchtl::segmentation_models {

// F.interpolate's options for smp's decoder_interpolation names ("nearest", "bilinear", "bicubic",
// "area", "nearest-exact"); align_corners applies to bilinear and bicubic. The caller sets the size
// or the scale factor, as smp's code does.
torch::nn::functional::InterpolateFuncOptions interpolation(const std::string& mode, bool align_corners = false);
torch::Tensor interpolate(const torch::Tensor& x, at::IntArrayRef size, const std::string& mode);
void check_interpolation(const std::string& mode);

class UnetDecoderBlockImpl : public torch::nn::Module {
 public:
  UnetDecoderBlockImpl(int64_t in_channels, int64_t skip_channels, int64_t out_channels, DecoderNorm norm,
                       const std::optional<std::string>& attention_type, std::string interpolation_mode);
  // skip is undefined for the last block.
  torch::Tensor forward(const torch::Tensor& x, int64_t height, int64_t width, const torch::Tensor& skip);

  Conv2dReLU conv1{nullptr}, conv2{nullptr};
  Attention attention1{nullptr}, attention2{nullptr};
  std::string interpolation_mode;

 protected:
  // What follows the upsampling: the skip concatenated (attention1), conv1, conv2, attention2.
  torch::Tensor fuse(const torch::Tensor& upsampled, const torch::Tensor& skip);

 private:
  models::TensorForward conv1_, conv2_;
};
TORCH_MODULE(UnetDecoderBlock);

class UnetDecoderImpl : public torch::nn::Module, public FeatureDecoder {
 public:
  UnetDecoderImpl(const std::vector<int64_t>& encoder_channels, const std::vector<int64_t>& decoder_channels,
                  int64_t n_blocks, DecoderNorm norm, const std::optional<std::string>& attention_type,
                  const std::string& interpolation_mode);
  torch::Tensor decode(const std::vector<torch::Tensor>& features) override;

  torch::nn::Identity center{nullptr};
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(UnetDecoder);

struct UnetOptions : CommonOptions {
  TORCH_ARG(std::string, decoder_use_norm) = "batchnorm";
  TORCH_ARG(std::vector<int64_t>, decoder_channels) = std::vector<int64_t>{256, 128, 64, 32, 16};
  TORCH_ARG(std::optional<std::string>, decoder_attention_type) = std::nullopt;
  TORCH_ARG(std::string, decoder_interpolation) = "nearest";
};

class UnetImpl : public SegmentationModelImpl {
 public:
  explicit UnetImpl(const UnetOptions& options);
};
TORCH_MODULE(Unet);

}  // namespace torchtl::segmentation_models
