#pragma once
// segmentation_models_pytorch's PSPNet (decoders/pspnet/): pyramid pooling (1, 2, 3, 6) on the
// deepest features of a shallow encoder (depth 3 by default).
#include <torch/nn.h>

#include <vector>

#include "segmentation_models/model.h"

namespace torchtl::segmentation_models {

class PSPBlockImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  PSPBlockImpl(int64_t in_channels, int64_t out_channels, int64_t pool_size, DecoderNorm norm);
  // Pooled to pool_size, convolved, upsampled back (bilinear, align_corners).
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  int64_t pool_size;
  ModuleChain pool{nullptr};
};
TORCH_MODULE(PSPBlock);

class PSPModuleImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  PSPModuleImpl(int64_t in_channels, const std::vector<int64_t>& sizes, DecoderNorm norm);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(PSPModule);

class PSPDecoderImpl : public torch::nn::Module, public FeatureDecoder {
 public:
  PSPDecoderImpl(const std::vector<int64_t>& encoder_channels, DecoderNorm norm, int64_t out_channels, double dropout);
  torch::Tensor decode(const std::vector<torch::Tensor>& features) override;

  PSPModule psp{nullptr};
  Conv2dReLU conv{nullptr};
  torch::nn::Dropout2d dropout{nullptr};

 private:
  models::TensorForward conv_;
};
TORCH_MODULE(PSPDecoder);

struct PSPNetOptions : CommonOptions {
  PSPNetOptions() { encoder_depth(3); }
  TORCH_ARG(int64_t, psp_out_channels) = 512;
  TORCH_ARG(std::string, decoder_use_norm) = "batchnorm";
  TORCH_ARG(double, psp_dropout) = 0.2;
  TORCH_ARG(int64_t, upsampling) = 8;
};

class PSPNetImpl : public SegmentationModelImpl {
 public:
  explicit PSPNetImpl(const PSPNetOptions& options);
};
TORCH_MODULE(PSPNet);

}  // namespace torchtl::segmentation_models
