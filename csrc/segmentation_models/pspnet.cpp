#include "segmentation_models/pspnet.h"

#include <c10/util/Exception.h>

namespace torchtl::segmentation_models {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

PSPBlockImpl::PSPBlockImpl(int64_t in_channels, int64_t out_channels, int64_t pool_size_, DecoderNorm norm)
    : pool_size(pool_size_) {
  // A 1x1 map has one value per channel, too few for batch norm in training: smp drops the norm there.
  if (pool_size == 1) norm = DecoderNorm::Identity;
  auto pooling = nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({pool_size, pool_size}));
  auto conv = Conv2dReLU(in_channels, out_channels, 1, 0, 1, norm);
  pool = register_module("pool", ModuleChain(std::vector<std::shared_ptr<nn::Module>>{pooling.ptr(), conv.ptr()}));
}

torch::Tensor PSPBlockImpl::forward(const torch::Tensor& x) {
  return F::interpolate(pool(x), F::InterpolateFuncOptions()
                                     .size(std::vector<int64_t>{x.size(2), x.size(3)})
                                     .mode(torch::kBilinear)
                                     .align_corners(true));
}

void PSPBlockImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "PSPBlock has no child '", name, "' that C++ can replace");
}

PSPModuleImpl::PSPModuleImpl(int64_t in_channels, const std::vector<int64_t>& sizes, DecoderNorm norm) {
  blocks = register_module("blocks", nn::ModuleList());
  const int64_t out_channels = in_channels / static_cast<int64_t>(sizes.size());
  for (int64_t size : sizes) blocks->push_back(PSPBlock(in_channels, out_channels, size, norm));
}

torch::Tensor PSPModuleImpl::forward(const torch::Tensor& x) {
  std::vector<torch::Tensor> xs;
  for (const auto& block : *blocks) xs.push_back(block->as<PSPBlockImpl>()->forward(x));
  xs.push_back(x);
  return torch::cat(xs, 1);
}

void PSPModuleImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "PSPModule has no child '", name, "' that C++ can replace");
}

PSPDecoderImpl::PSPDecoderImpl(const std::vector<int64_t>& encoder_channels, DecoderNorm norm, int64_t out_channels,
                               double dropout_p) {
  const int64_t channels = encoder_channels.back();
  psp = register_module("psp", PSPModule(channels, std::vector<int64_t>{1, 2, 3, 6}, norm));
  conv = register_module("conv", Conv2dReLU(channels * 2, out_channels, 1, 0, 1, norm));
  dropout = register_module("dropout", nn::Dropout2d(dropout_p));
  conv_ = models::tensor_forward(conv.ptr());
}

torch::Tensor PSPDecoderImpl::decode(const std::vector<torch::Tensor>& features) {
  return dropout(conv_(psp(features.back())));
}

PSPNetImpl::PSPNetImpl(const PSPNetOptions& o) {
  ResNetEncoder encoder(ResNetEncoderOptions(o.encoder_name())
                            .in_channels(o.in_channels())
                            .depth(o.encoder_depth())
                            .pretrained(o.encoder_pretrained()));
  PSPDecoder decoder(encoder->out_channels(), decoder_norm(o.decoder_use_norm()), o.psp_out_channels(), o.psp_dropout());
  SegmentationHead head(o.psp_out_channels(), o.classes(), 3, o.activation(), o.upsampling());
  build(o, encoder, decoder.ptr(), head);
}

}  // namespace torchtl::segmentation_models
