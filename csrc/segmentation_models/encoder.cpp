#include "segmentation_models/encoder.h"

#include <c10/util/Exception.h>

#include <sstream>

#include "models/resnet.h"

namespace torchtl::segmentation_models {

namespace nn = torch::nn;

namespace {

// smp's resnet_encoders (encoders/resnet.py): torchvision's builders, and the ResNeXt-101 32xNd
// widths torchvision has no builder for (width_per_group N).
const std::vector<std::pair<std::string, int64_t>>& presets() {
  static const std::vector<std::pair<std::string, int64_t>> table = {
      {"resnet18", 0},         {"resnet34", 0},          {"resnet50", 0},          {"resnet101", 0},
      {"resnet152", 0},        {"resnext50_32x4d", 0},   {"resnext101_32x4d", 4},  {"resnext101_32x8d", 0},
      {"resnext101_32x16d", 16}, {"resnext101_32x32d", 32}, {"resnext101_32x48d", 48},
  };
  return table;
}

models::ResNetOptions preset(const std::string& name) {
  for (const auto& [arch, width] : presets()) {
    if (name != arch) continue;
    if (width == 0) return models::resnet_options(arch);
    return models::ResNetOptions(models::BlockType::Bottleneck, {3, 4, 23, 3}).groups(32).width_per_group(width);
  }
  std::ostringstream known;
  for (const auto& n : resnet_encoder_names()) known << " " << n;
  TORCH_CHECK_VALUE(false, "encoder_name '", name, "' is not supported; torchtl builds:", known.str());
}

// smp's replace_strides_with_dilation: every convolution of the stage, the downsample included.
void dilate(nn::Sequential& layer, int64_t rate) {
  for (auto& module : layer->modules(false)) {
    if (auto* conv = module->as<nn::Conv2d>()) {
      const auto kernel = *conv->options.kernel_size();
      conv->options.stride(1);
      conv->options.dilation(rate);
      conv->options.padding(torch::ExpandingArray<2>({(kernel[0] / 2) * rate, (kernel[1] / 2) * rate}));
    }
  }
}

}  // namespace

const std::vector<std::string>& resnet_encoder_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& p : presets()) out.push_back(p.first);
    return out;
  }();
  return names;
}

ResNetEncoderImpl::ResNetEncoderImpl(const ResNetEncoderOptions& options_) : options(options_) {
  const auto resnet_options = preset(options.name());
  TORCH_CHECK_VALUE(options.depth() >= 1 && options.depth() <= 5, "ResNetEncoder depth should be in range [1, 5], got ",
                    options.depth());
  TORCH_CHECK_VALUE(options.output_stride() == 32 || options.output_stride() == 16 || options.output_stride() == 8,
                    "Output stride should be 16 or 8, got ", options.output_stride(), ".");
  TORCH_CHECK_VALUE(options.in_channels() > 0, "in_channels must be positive, got ", options.in_channels());
  // smp builds a whole torchvision ResNet (its fc draws its initialisation too) and deletes avgpool
  // and fc: the same draws in the same order.
  models::ResNet resnet(resnet_options);
  conv1 = register_module("conv1", resnet->conv1);
  bn1 = models::Norm2d(register_module("bn1", resnet->bn1.ptr()));
  relu = register_module("relu", resnet->relu);
  maxpool = register_module("maxpool", resnet->maxpool);
  layer1 = register_module("layer1", resnet->layer1);
  layer2 = register_module("layer2", resnet->layer2);
  layer3 = register_module("layer3", resnet->layer3);
  layer4 = register_module("layer4", resnet->layer4);
  const bool basic = resnet_options.block() == models::BlockType::Basic;
  channels_ = basic ? std::vector<int64_t>{3, 64, 64, 128, 256, 512} : std::vector<int64_t>{3, 64, 256, 512, 1024, 2048};
  if (options.in_channels() != 3) {
    // smp's patch_first_conv: a fresh weight with Conv2d's default draw, unless pretrained
    // weights will be adapted into it (then nothing is drawn; the loader fills it).
    conv1->options.in_channels(options.in_channels());
    conv1->weight.set_data(torch::empty({64, options.in_channels(), 7, 7}, conv1->weight.options()));
    if (!options.pretrained()) conv1->reset_parameters();
    channels_[0] = options.in_channels();
  }
  if (options.output_stride() != 32) {
    if (options.output_stride() == 8) dilate(layer3, 2);
    dilate(layer4, options.output_stride() == 8 ? 4 : 2);
  }
  for (const auto& layer : {layer1, layer2, layer3, layer4}) layers_.push_back(models::tensor_forward(layer.ptr()));
}

std::vector<torch::Tensor> ResNetEncoderImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == conv1->options.in_channels(), "ResNetEncoder expects an N x ",
                    conv1->options.in_channels(), " x H x W batch, got shape ", x.sizes());
  std::vector<torch::Tensor> features{x};
  if (options.depth() < 1) return features;
  auto out = fold1_.with_relu(*conv1, bn1, *relu, x);
  features.push_back(out);
  if (options.depth() >= 2) {
    out = layers_[0](maxpool(out));
    features.push_back(out);
  }
  for (int64_t stage = 3; stage <= options.depth(); ++stage) {
    out = layers_[stage - 2](out);
    features.push_back(out);
  }
  return features;
}

std::vector<int64_t> ResNetEncoderImpl::out_channels() const {
  return std::vector<int64_t>(channels_.begin(), channels_.begin() + options.depth() + 1);
}

int64_t ResNetEncoderImpl::output_stride() const {
  return std::min<int64_t>(options.output_stride(), int64_t{1} << options.depth());
}

}  // namespace torchtl::segmentation_models
