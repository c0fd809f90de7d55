#pragma once
// segmentation_models_pytorch's Linknet (decoders/linknet/): residual decoder blocks (1x1 conv,
// transposed 2x conv, 1x1 conv) added to the encoder's features.
#include <torch/nn.h>

#include <vector>

#include "segmentation_models/model.h"

namespace torchtl::segmentation_models {

// ConvTranspose2d(kernel 4, stride 2, padding 1) -> norm -> ReLU(inplace).
class TransposeX2Impl : public torch::nn::SequentialImpl {
 public:
  TransposeX2Impl(int64_t in_channels, int64_t out_channels, DecoderNorm norm);
};
TORCH_MODULE(TransposeX2);

class LinknetDecoderBlockImpl : public torch::nn::Module {
 public:
  LinknetDecoderBlockImpl(int64_t in_channels, int64_t out_channels, DecoderNorm norm);
  // skip is undefined for the last block.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& skip);

  ModuleChain block{nullptr};
};
TORCH_MODULE(LinknetDecoderBlock);

class LinknetDecoderImpl : public torch::nn::Module, public FeatureDecoder {
 public:
  LinknetDecoderImpl(const std::vector<int64_t>& encoder_channels, int64_t prefinal_channels, int64_t n_blocks,
                     DecoderNorm norm);
  torch::Tensor decode(const std::vector<torch::Tensor>& features) override;

  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(LinknetDecoder);

struct LinknetOptions : CommonOptions {
  TORCH_ARG(std::string, decoder_use_norm) = "batchnorm";
};

class LinknetImpl : public SegmentationModelImpl {
 public:
  explicit LinknetImpl(const LinknetOptions& options);
};
TORCH_MODULE(Linknet);

}  // namespace torchtl::segmentation_models
