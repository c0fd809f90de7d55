#include "segmentation_models/fpn.h"

#include <c10/util/Exception.h>

#include "segmentation_models/unet.h"

namespace torchtl::segmentation_models {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

namespace {

// F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=...) as smp calls it.
torch::Tensor upsample2x(const torch::Tensor& x, const std::string& mode, bool align_corners = false) {
  return F::interpolate(x, interpolation(mode, align_corners).scale_factor(std::vector<double>{2.0, 2.0}));
}

}  // namespace

Conv3x3GNReLUImpl::Conv3x3GNReLUImpl(int64_t in_channels, int64_t out_channels, bool upsample_) : upsample(upsample_) {
  nn::Sequential layers;
  layers->push_back(nn::Conv2d(nn::Conv2dOptions(in_channels, out_channels, 3).padding(1).bias(false)));
  layers->push_back(nn::GroupNorm(32, out_channels));
  layers->push_back(nn::ReLU(nn::ReLUOptions(true)));
  block = register_module("block", layers);
}

torch::Tensor Conv3x3GNReLUImpl::forward(const torch::Tensor& x) {
  auto out = block->forward(x);
  return upsample ? upsample2x(out, "bilinear", true) : out;
}

void Conv3x3GNReLUImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "Conv3x3GNReLU has no child '", name, "' that C++ can replace");
}

FPNBlockImpl::FPNBlockImpl(int64_t pyramid_channels, int64_t skip_channels, std::string interpolation_mode_)
    : interpolation_mode(std::move(interpolation_mode_)) {
  check_interpolation(interpolation_mode);
  skip_conv = register_module("skip_conv", nn::Conv2d(nn::Conv2dOptions(skip_channels, pyramid_channels, 1)));
}

torch::Tensor FPNBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& skip) {
  const auto up = upsample2x(x, interpolation_mode);
  return up + skip_conv(skip);
}

SegmentationBlockImpl::SegmentationBlockImpl(int64_t in_channels, int64_t out_channels, int64_t n_upsamples) {
  nn::Sequential blocks;
  blocks->push_back(Conv3x3GNReLU(in_channels, out_channels, n_upsamples > 0));
  for (int64_t i = 1; i < n_upsamples; ++i) blocks->push_back(Conv3x3GNReLU(out_channels, out_channels, true));
  block = register_module("block", blocks);
}

void SegmentationBlockImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "SegmentationBlock has no child '", name, "' that C++ can replace");
}

MergeBlockImpl::MergeBlockImpl(std::string policy_) : policy(std::move(policy_)) {
  TORCH_CHECK_VALUE(policy == "add" || policy == "cat", "`merge_policy` must be one of: ['add', 'cat'], got ", policy);
}

torch::Tensor MergeBlockImpl::forward(const std::vector<torch::Tensor>& x) {
  return policy == "add" ? torch::stack(x).sum(0) : torch::cat(x, 1);
}

FPNDecoderImpl::FPNDecoderImpl(const std::vector<int64_t>& encoder_channels_, int64_t encoder_depth,
                               int64_t pyramid_channels, int64_t segmentation_channels, double dropout_p,
                               const std::string& merge_policy, const std::string& interpolation_mode) {
  out_channels_ = merge_policy == "add" ? segmentation_channels : segmentation_channels * 4;
  TORCH_CHECK_VALUE(encoder_depth >= 3, "Encoder depth for FPN decoder cannot be less than 3, got ", encoder_depth, ".");
  std::vector<int64_t> channels(encoder_channels_.rbegin(), encoder_channels_.rend());
  channels.resize(std::min<size_t>(channels.size(), encoder_depth + 1));
  p5 = register_module("p5", nn::Conv2d(nn::Conv2dOptions(channels[0], pyramid_channels, 1)));
  p4 = register_module("p4", FPNBlock(pyramid_channels, channels[1], interpolation_mode));
  p3 = register_module("p3", FPNBlock(pyramid_channels, channels[2], interpolation_mode));
  p2 = register_module("p2", FPNBlock(pyramid_channels, channels[3], interpolation_mode));
  seg_blocks = register_module("seg_blocks", nn::ModuleList());
  for (int64_t n_upsamples : {3, 2, 1, 0}) {
    seg_blocks->push_back(SegmentationBlock(pyramid_channels, segmentation_channels, n_upsamples));
  }
  merge = register_module("merge", MergeBlock(merge_policy));
  dropout = register_module("dropout", nn::Dropout2d(nn::Dropout2dOptions(dropout_p).inplace(true)));
}

torch::Tensor FPNDecoderImpl::decode(const std::vector<torch::Tensor>& features) {
  const size_t n = features.size();
  const auto &c2 = features[n - 4], &c3 = features[n - 3], &c4 = features[n - 2], &c5 = features[n - 1];
  const auto p5_out = p5(c5);
  const auto p4_out = p4(p5_out, c4);
  const auto p3_out = p3(p4_out, c3);
  const auto p2_out = p2(p3_out, c2);
  std::vector<torch::Tensor> pyramid;
  const torch::Tensor* levels[] = {&p5_out, &p4_out, &p3_out, &p2_out};
  for (size_t i = 0; i < 4; ++i) pyramid.push_back(seg_blocks[i]->as<SegmentationBlockImpl>()->forward(*levels[i]));
  return dropout(merge(pyramid));
}

FPNImpl::FPNImpl(const FPNOptions& o) {
  ResNetEncoder encoder(ResNetEncoderOptions(o.encoder_name())
                            .in_channels(o.in_channels())
                            .depth(o.encoder_depth())
                            .pretrained(o.encoder_pretrained()));
  FPNDecoder decoder(encoder->out_channels(), o.encoder_depth(), o.decoder_pyramid_channels(),
                     o.decoder_segmentation_channels(), o.decoder_dropout(), o.decoder_merge_policy(),
                     o.decoder_interpolation());
  SegmentationHead head(decoder->out_channels(), o.classes(), 1, o.activation(), o.upsampling());
  build(o, encoder, decoder.ptr(), head);
}

}  // namespace torchtl::segmentation_models
