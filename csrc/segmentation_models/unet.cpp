#include "segmentation_models/unet.h"

#include <c10/util/Exception.h>

namespace torchtl::segmentation_models {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

void check_interpolation(const std::string& mode) {
  TORCH_CHECK_VALUE(mode == "nearest" || mode == "bilinear" || mode == "bicubic" || mode == "area" ||
                        mode == "nearest-exact",
                    "decoder_interpolation should be nearest, bilinear, bicubic, area or nearest-exact, got '", mode, "'");
}

F::InterpolateFuncOptions interpolation(const std::string& mode, bool align_corners) {
  F::InterpolateFuncOptions options;
  if (mode == "nearest") options.mode(torch::kNearest);
  else if (mode == "bilinear") options.mode(torch::kBilinear);
  else if (mode == "bicubic") options.mode(torch::kBicubic);
  else if (mode == "area") options.mode(torch::kArea);
  else options.mode(torch::kNearestExact);
  if (mode == "bilinear" || mode == "bicubic") options.align_corners(align_corners);
  return options;
}

torch::Tensor interpolate(const torch::Tensor& x, at::IntArrayRef size, const std::string& mode) {
  return F::interpolate(x, interpolation(mode).size(std::vector<int64_t>(size.begin(), size.end())));
}

UnetDecoderBlockImpl::UnetDecoderBlockImpl(int64_t in_channels, int64_t skip_channels, int64_t out_channels,
                                           DecoderNorm norm, const std::optional<std::string>& attention_type,
                                           std::string interpolation_mode_)
    : interpolation_mode(std::move(interpolation_mode_)) {
  check_interpolation(interpolation_mode);
  conv1 = register_module("conv1", Conv2dReLU(in_channels + skip_channels, out_channels, 3, 1, 1, norm));
  attention1 = register_module("attention1", Attention(attention_type, in_channels + skip_channels));
  conv2 = register_module("conv2", Conv2dReLU(out_channels, out_channels, 3, 1, 1, norm));
  attention2 = register_module("attention2", Attention(attention_type, out_channels));
  conv1_ = models::tensor_forward(conv1.ptr());
  conv2_ = models::tensor_forward(conv2.ptr());
}

torch::Tensor UnetDecoderBlockImpl::forward(const torch::Tensor& x, int64_t height, int64_t width,
                                            const torch::Tensor& skip) {
  return fuse(interpolate(x, {height, width}, interpolation_mode), skip);
}

torch::Tensor UnetDecoderBlockImpl::fuse(const torch::Tensor& upsampled, const torch::Tensor& skip) {
  auto out = skip.defined() ? attention1(torch::cat({upsampled, skip}, 1)) : upsampled;
  return attention2(conv2_(conv1_(out)));
}

UnetDecoderImpl::UnetDecoderImpl(const std::vector<int64_t>& encoder_channels,
                                 const std::vector<int64_t>& decoder_channels, int64_t n_blocks, DecoderNorm norm,
                                 const std::optional<std::string>& attention_type,
                                 const std::string& interpolation_mode) {
  TORCH_CHECK_VALUE(n_blocks == static_cast<int64_t>(decoder_channels.size()), "Model depth is ", n_blocks,
                    ", but you provide `decoder_channels` for ", decoder_channels.size(), " blocks.");
  // Without the input's own "feature", deepest first.
  std::vector<int64_t> encoder(encoder_channels.rbegin(), encoder_channels.rend() - 1);
  const int64_t head_channels = encoder.front();
  std::vector<int64_t> in_channels{head_channels};
  in_channels.insert(in_channels.end(), decoder_channels.begin(), decoder_channels.end() - 1);
  std::vector<int64_t> skip_channels(encoder.begin() + 1, encoder.end());
  skip_channels.push_back(0);
  center = register_module("center", nn::Identity());
  blocks = register_module("blocks", nn::ModuleList());
  for (size_t i = 0; i < decoder_channels.size(); ++i) {
    // zip() in smp: as many blocks as the shortest of the three lists.
    if (i >= in_channels.size() || i >= skip_channels.size()) break;
    blocks->push_back(UnetDecoderBlock(in_channels[i], skip_channels[i], decoder_channels[i], norm, attention_type,
                                       interpolation_mode));
  }
}

torch::Tensor UnetDecoderImpl::decode(const std::vector<torch::Tensor>& features) {
  // Deepest first, without the input itself; the target sizes run from the second deepest up.
  std::vector<torch::Tensor> reversed(features.rbegin(), features.rend() - 1);
  auto x = center(reversed.front());
  for (size_t i = 0; i < blocks->size(); ++i) {
    const auto& target = features[features.size() - 2 - i];
    const auto skip = i + 1 < reversed.size() ? reversed[i + 1] : torch::Tensor();
    x = blocks[i]->as<UnetDecoderBlockImpl>()->forward(x, target.size(2), target.size(3), skip);
  }
  return x;
}

UnetImpl::UnetImpl(const UnetOptions& o) {
  requires_divisible_input_shape_ = false;
  ResNetEncoder encoder(ResNetEncoderOptions(o.encoder_name())
                            .in_channels(o.in_channels())
                            .depth(o.encoder_depth())
                            .pretrained(o.encoder_pretrained()));
  UnetDecoder decoder(encoder->out_channels(), o.decoder_channels(), o.encoder_depth(), decoder_norm(o.decoder_use_norm()),
                      o.decoder_attention_type(), o.decoder_interpolation());
  SegmentationHead head(o.decoder_channels().back(), o.classes(), 3, o.activation());
  build(o, encoder, decoder.ptr(), head);
}

}  // namespace torchtl::segmentation_models
