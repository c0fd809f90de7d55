#include "segmentation_models/pan.h"

#include <c10/util/Exception.h>

#include "segmentation_models/unet.h"

namespace torchtl::segmentation_models {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

namespace {

// smp's PAN interpolates with align_corners=True in bilinear mode (None, i.e. False, otherwise).
torch::Tensor resize(const torch::Tensor& x, int64_t height, int64_t width, const std::string& mode) {
  return F::interpolate(x, interpolation(mode, mode == "bilinear").size(std::vector<int64_t>{height, width}));
}

}  // namespace

ConvBnReluImpl::ConvBnReluImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t padding,
                               bool add_relu_)
    : add_relu(add_relu_) {
  conv = register_module("conv", nn::Conv2d(nn::Conv2dOptions(in_channels, out_channels, kernel_size).padding(padding)));
  activation = register_module("activation", nn::ReLU(nn::ReLUOptions(true)));
  bn = register_module("bn", nn::BatchNorm2d(out_channels));
}

torch::Tensor ConvBnReluImpl::forward(const torch::Tensor& x) {
  auto out = bn(conv(x));
  return add_relu ? activation(out) : out;
}

void ConvBnReluImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "ConvBnRelu has no child '", name, "' that C++ can replace");
}

FPABlockImpl::FPABlockImpl(int64_t in_channels, int64_t out_channels) {
  auto pool = [] { return nn::MaxPool2d(nn::MaxPool2dOptions(2).stride(2)); };
  nn::Sequential global;
  global->push_back(nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
  global->push_back(ConvBnRelu(in_channels, out_channels, 1));
  branch1 = register_module("branch1", global);
  nn::Sequential middle;
  middle->push_back(ConvBnRelu(in_channels, out_channels, 1));
  mid = register_module("mid", middle);
  nn::Sequential d1;
  d1->push_back(pool());
  d1->push_back(ConvBnRelu(in_channels, 1, 7, 3));
  down1 = register_module("down1", d1);
  nn::Sequential d2;
  d2->push_back(pool());
  d2->push_back(ConvBnRelu(1, 1, 5, 2));
  down2 = register_module("down2", d2);
  nn::Sequential d3;
  d3->push_back(pool());
  d3->push_back(ConvBnRelu(1, 1, 3, 1));
  d3->push_back(ConvBnRelu(1, 1, 3, 1));
  down3 = register_module("down3", d3);
  conv2 = register_module("conv2", ConvBnRelu(1, 1, 5, 2));
  conv1 = register_module("conv1", ConvBnRelu(1, 1, 7, 3));
}

torch::Tensor FPABlockImpl::forward(const torch::Tensor& input) {
  const int64_t h = input.size(2), w = input.size(3);
  const auto branch = resize(branch1->forward(input), h, w, "bilinear");
  const auto middle = mid->forward(input);
  const auto x1 = down1->forward(input);
  const auto x2 = down2->forward(x1);
  auto x3 = resize(down3->forward(x2), h / 4, w / 4, "bilinear");
  auto x = resize(conv2(x2) + x3, h / 2, w / 2, "bilinear");
  x = resize(x + conv1(x1), h, w, "bilinear");
  return torch::mul(x, middle) + branch;
}

void FPABlockImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "FPABlock has no child '", name, "' that C++ can replace");
}

GAUBlockImpl::GAUBlockImpl(int64_t in_channels, int64_t out_channels, std::string interpolation_mode_)
    : interpolation_mode(std::move(interpolation_mode_)) {
  check_interpolation(interpolation_mode);
  nn::Sequential attention;
  attention->push_back(nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
  attention->push_back(ConvBnRelu(out_channels, out_channels, 1, 0, /*add_relu=*/false));
  attention->push_back(nn::Sigmoid());
  conv1 = register_module("conv1", attention);
  conv2 = register_module("conv2", ConvBnRelu(in_channels, out_channels, 3, 1));
}

torch::Tensor GAUBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& y) {
  // One statement per step, in smp's order (C++ leaves the order of arguments open).
  const auto y_up = resize(y, x.size(2), x.size(3), interpolation_mode);
  const auto low = conv2(x);
  const auto attention = conv1->forward(y);
  return y_up + torch::mul(low, attention);
}

PANDecoderImpl::PANDecoderImpl(const std::vector<int64_t>& encoder_channels_, int64_t encoder_depth,
                               int64_t decoder_channels, const std::string& interpolation_mode) {
  TORCH_CHECK_VALUE(encoder_depth >= 3, "Encoder depth for PAN decoder cannot be less than 3, got ", encoder_depth, ".");
  const std::vector<int64_t> channels(encoder_channels_.begin() + 2, encoder_channels_.end());
  fpa = register_module("fpa", FPABlock(channels.back(), decoder_channels));
  if (encoder_depth == 5) gau3 = register_module("gau3", GAUBlock(channels[2], decoder_channels, interpolation_mode));
  if (encoder_depth >= 4) gau2 = register_module("gau2", GAUBlock(channels[1], decoder_channels, interpolation_mode));
  gau1 = register_module("gau1", GAUBlock(channels[0], decoder_channels, interpolation_mode));
}

torch::Tensor PANDecoderImpl::decode(const std::vector<torch::Tensor>& all) {
  const std::vector<torch::Tensor> features(all.begin() + 2, all.end());
  auto out = fpa(features.back());
  if (gau3) out = gau3(features[2], out);
  if (gau2) out = gau2(features[1], out);
  return gau1(features[0], out);
}

PANImpl::PANImpl(const PANOptions& o) {
  const int64_t stride = o.encoder_output_stride();
  TORCH_CHECK_VALUE(stride == 16 || stride == 32, "PAN support output stride 16 or 32, got ", stride);
  ResNetEncoder encoder(ResNetEncoderOptions(o.encoder_name())
                            .in_channels(o.in_channels())
                            .depth(o.encoder_depth())
                            .output_stride(stride)
                            .pretrained(o.encoder_pretrained()));
  PANDecoder decoder(encoder->out_channels(), o.encoder_depth(), o.decoder_channels(), o.decoder_interpolation());
  SegmentationHead head(o.decoder_channels(), o.classes(), 3, o.activation(), o.upsampling());
  build(o, encoder, decoder.ptr(), head);
}

}  // namespace torchtl::segmentation_models
