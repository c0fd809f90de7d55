#include "segmentation_models/deeplabv3plus.h"

#include <c10/util/Exception.h>

#include "models/segmentation.h"

namespace torchtl::segmentation_models {

namespace nn = torch::nn;

namespace {

nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, bool bias = false) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).bias(bias));
}

}  // namespace

SeparableConv2dImpl::SeparableConv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size,
                                         int64_t padding, int64_t dilation, bool bias) {
  depthwise = register_module("0", nn::Conv2d(nn::Conv2dOptions(in_channels, in_channels, kernel_size)
                                                  .padding(padding)
                                                  .dilation(dilation)
                                                  .groups(in_channels)
                                                  .bias(false)));
  pointwise = register_module("1", conv(in_channels, out_channels, 1, bias));
}

void SeparableConv2dImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "SeparableConv2d has no child '", name, "' that C++ can replace");
}

ASPPSeparableConvImpl::ASPPSeparableConvImpl(int64_t in_channels, int64_t out_channels, int64_t dilation) {
  push_back(SeparableConv2d(in_channels, out_channels, 3, dilation, dilation, false));
  push_back(nn::BatchNorm2d(out_channels));
  push_back(nn::ReLU());
}

ASPPImpl::ASPPImpl(int64_t in_channels, int64_t out_channels, const std::vector<int64_t>& atrous_rates, bool separable,
                   double dropout) {
  TORCH_CHECK_VALUE(atrous_rates.size() == 3, "decoder_atrous_rates needs 3 rates, got ", atrous_rates.size());
  convs = nn::ModuleList();
  {
    nn::Sequential first;
    first->push_back(conv(in_channels, out_channels, 1));
    first->push_back(nn::BatchNorm2d(out_channels));
    first->push_back(nn::ReLU());
    convs->push_back(first);
  }
  for (int64_t rate : atrous_rates) {
    if (separable) {
      convs->push_back(ASPPSeparableConv(in_channels, out_channels, rate));
    } else {
      convs->push_back(models::ASPPConv(in_channels, out_channels, rate));
    }
  }
  convs->push_back(models::ASPPPooling(in_channels, out_channels));
  register_module("convs", convs);
  nn::Sequential projection;
  projection->push_back(conv(5 * out_channels, out_channels, 1));
  projection->push_back(nn::BatchNorm2d(out_channels));
  projection->push_back(nn::ReLU());
  projection->push_back(nn::Dropout(dropout));
  project = register_module("project", projection);
  for (const auto& branch : convs->children()) branches_.push_back(models::tensor_forward(branch));
  project_ = models::tensor_forward(project.ptr());
}

torch::Tensor ASPPImpl::forward(const torch::Tensor& x) {
  std::vector<torch::Tensor> results;
  results.reserve(branches_.size());
  for (const auto& branch : branches_) results.push_back(branch(x));
  return project_(torch::cat(results, 1));
}

void ASPPImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  TORCH_CHECK_VALUE(false, "ASPP has no child '", name, "' that C++ can replace");
}

DeepLabV3PlusDecoderImpl::DeepLabV3PlusDecoderImpl(const std::vector<int64_t>& encoder_channels, int64_t encoder_depth,
                                                   int64_t out_channels, const std::vector<int64_t>& atrous_rates,
                                                   int64_t output_stride, bool aspp_separable, double aspp_dropout) {
  TORCH_CHECK_VALUE(encoder_depth >= 3, "Encoder depth for DeepLabV3Plus decoder cannot be less than 3, got ",
                    encoder_depth, ".");
  nn::Sequential head;
  head->push_back(ASPP(encoder_channels.back(), out_channels, atrous_rates, aspp_separable, aspp_dropout));
  head->push_back(SeparableConv2d(out_channels, out_channels, 3, 1, 1, false));
  head->push_back(nn::BatchNorm2d(out_channels));
  head->push_back(nn::ReLU());
  aspp = register_module("aspp", head);
  const double scale = output_stride == 16 && encoder_depth > 3 ? 4.0 : 2.0;
  up = register_module("up", nn::Upsample(nn::UpsampleOptions()
                                              .scale_factor(std::vector<double>{scale, scale})
                                              .mode(torch::kBilinear)
                                              .align_corners(true)));
  const int64_t highres_in = encoder_channels[2], highres_out = 48;
  nn::Sequential first;
  first->push_back(conv(highres_in, highres_out, 1));
  first->push_back(nn::BatchNorm2d(highres_out));
  first->push_back(nn::ReLU());
  block1 = register_module("block1", first);
  nn::Sequential second;
  second->push_back(SeparableConv2d(highres_out + out_channels, out_channels, 3, 1, 1, false));
  second->push_back(nn::BatchNorm2d(out_channels));
  second->push_back(nn::ReLU());
  block2 = register_module("block2", second);
  aspp_ = models::tensor_forward(aspp.ptr());
  block1_ = models::tensor_forward(block1.ptr());
  block2_ = models::tensor_forward(block2.ptr());
}

torch::Tensor DeepLabV3PlusDecoderImpl::decode(const std::vector<torch::Tensor>& features) {
  const auto aspp_features = up(aspp_(features.back()));
  const auto high_res_features = block1_(features[2]);
  return block2_(torch::cat({aspp_features, high_res_features}, 1));
}

DeepLabV3PlusImpl::DeepLabV3PlusImpl(const DeepLabV3PlusOptions& o) {
  const int64_t stride = o.encoder_output_stride();
  TORCH_CHECK_VALUE(stride == 8 || stride == 16, "DeeplabV3Plus support output stride 8 or 16, got ", stride, ".");
  ResNetEncoder encoder(ResNetEncoderOptions(o.encoder_name())
                            .in_channels(o.in_channels())
                            .depth(o.encoder_depth())
                            .output_stride(stride)
                            .pretrained(o.encoder_pretrained()));
  DeepLabV3PlusDecoder decoder(encoder->out_channels(), o.encoder_depth(), o.decoder_channels(),
                               o.decoder_atrous_rates(), stride, o.decoder_aspp_separable(), o.decoder_aspp_dropout());
  SegmentationHead head(o.decoder_channels(), o.classes(), 1, o.activation(), o.upsampling());
  build(o, encoder, decoder.ptr(), head, /*initialize=*/false);
}

}  // namespace torchtl::segmentation_models
