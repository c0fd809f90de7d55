#include "segmentation_models/linknet.h"

namespace torchtl::segmentation_models {

namespace nn = torch::nn;

TransposeX2Impl::TransposeX2Impl(int64_t in_channels, int64_t out_channels, DecoderNorm norm) {
  push_back(nn::ConvTranspose2d(nn::ConvTranspose2dOptions(in_channels, out_channels, 4).stride(2).padding(1)));
  if (norm == DecoderNorm::Identity) {
    push_back(nn::Identity());
  } else {
    push_back(nn::BatchNorm2d(out_channels));
  }
  push_back(nn::ReLU(nn::ReLUOptions(true)));
}

LinknetDecoderBlockImpl::LinknetDecoderBlockImpl(int64_t in_channels, int64_t out_channels, DecoderNorm norm) {
  auto first = Conv2dReLU(in_channels, in_channels / 4, 1, 0, 1, norm);
  auto transpose = TransposeX2(in_channels / 4, in_channels / 4, norm);
  auto last = Conv2dReLU(in_channels / 4, out_channels, 1, 0, 1, norm);
  block = register_module("block", ModuleChain(std::vector<std::shared_ptr<nn::Module>>{first.ptr(), transpose.ptr(), last.ptr()}));
}

torch::Tensor LinknetDecoderBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& skip) {
  auto out = block(x);
  if (skip.defined() && skip.size(1) != 0) out = out + skip;
  return out;
}

LinknetDecoderImpl::LinknetDecoderImpl(const std::vector<int64_t>& encoder_channels, int64_t prefinal_channels,
                                       int64_t n_blocks, DecoderNorm norm) {
  std::vector<int64_t> channels(encoder_channels.rbegin(), encoder_channels.rend() - 1);
  channels.push_back(prefinal_channels);
  blocks = register_module("blocks", nn::ModuleList());
  for (int64_t i = 0; i < n_blocks; ++i) blocks->push_back(LinknetDecoderBlock(channels[i], channels[i + 1], norm));
}

torch::Tensor LinknetDecoderImpl::decode(const std::vector<torch::Tensor>& features) {
  std::vector<torch::Tensor> reversed(features.rbegin(), features.rend() - 1);
  auto x = reversed.front();
  for (size_t i = 0; i < blocks->size(); ++i) {
    const auto skip = i + 1 < reversed.size() ? reversed[i + 1] : torch::Tensor();
    x = blocks[i]->as<LinknetDecoderBlockImpl>()->forward(x, skip);
  }
  return x;
}

LinknetImpl::LinknetImpl(const LinknetOptions& o) {
  ResNetEncoder encoder(ResNetEncoderOptions(o.encoder_name())
                            .in_channels(o.in_channels())
                            .depth(o.encoder_depth())
                            .pretrained(o.encoder_pretrained()));
  LinknetDecoder decoder(encoder->out_channels(), 32, o.encoder_depth(), decoder_norm(o.decoder_use_norm()));
  SegmentationHead head(32, o.classes(), 1, o.activation());
  build(o, encoder, decoder.ptr(), head);
}

}  // namespace torchtl::segmentation_models
