#include "models/resnet.h"

#include <c10/util/Exception.h>

#include <sstream>

#include "models/fast_path.h"

namespace torchtl::models {

namespace nn = torch::nn;

nn::Conv2d conv3x3(int64_t in_planes, int64_t out_planes, int64_t stride, int64_t groups, int64_t dilation) {
  return nn::Conv2d(nn::Conv2dOptions(in_planes, out_planes, 3)
                        .stride(stride)
                        .padding(dilation)
                        .groups(groups)
                        .bias(false)
                        .dilation(dilation));
}

nn::Conv2d conv1x1(int64_t in_planes, int64_t out_planes, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in_planes, out_planes, 1).stride(stride).bias(false));
}

BasicBlockImpl::BasicBlockImpl(const BlockOptions& options_, nn::Sequential downsample_) : options(options_) {
  TORCH_CHECK_VALUE(options.groups() == 1 && options.base_width() == 64, "BasicBlock only supports groups=1 and base_width=64");
  TORCH_CHECK_NOT_IMPLEMENTED(options.dilation() <= 1, "Dilation > 1 not supported in BasicBlock");
  conv1 = register_module("conv1", conv3x3(options.inplanes(), options.planes(), options.stride()));
  bn1 = Norm2d(register_module("bn1", make_norm(options.norm_layer(), options.planes())));
  relu = register_module("relu", nn::ReLU(nn::ReLUOptions(true)));
  conv2 = register_module("conv2", conv3x3(options.planes(), options.planes()));
  bn2 = Norm2d(register_module("bn2", make_norm(options.norm_layer(), options.planes())));
  if (downsample_) downsample = register_module("downsample", downsample_);
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  auto out = fold1_.with_relu(*conv1, bn1, *relu, x);
  out = fold2_(*conv2, bn2, out);
  out += downsample ? fold_downsample_(*downsample, x) : x;
  return relu(out);
}

void BasicBlockImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module> module) {
  if (name == "conv1") return assign_child(*this, name, conv1, module);
  if (name == "conv2") return assign_child(*this, name, conv2, module);
  if (name == "bn1") return assign_child(*this, name, bn1, module);
  if (name == "bn2") return assign_child(*this, name, bn2, module);
  if (name == "relu") return assign_child(*this, name, relu, module);
  if (name == "downsample" && downsample) return assign_child(*this, name, downsample, module);
  TORCH_CHECK_VALUE(false, "BasicBlock has no replaceable child '", name, "'");
}

BottleneckImpl::BottleneckImpl(const BlockOptions& options_, nn::Sequential downsample_) : options(options_) {
  const int64_t width = static_cast<int64_t>(options.planes() * (options.base_width() / 64.0)) * options.groups();
  conv1 = register_module("conv1", conv1x1(options.inplanes(), width));
  bn1 = Norm2d(register_module("bn1", make_norm(options.norm_layer(), width)));
  conv2 = register_module("conv2", conv3x3(width, width, options.stride(), options.groups(), options.dilation()));
  bn2 = Norm2d(register_module("bn2", make_norm(options.norm_layer(), width)));
  conv3 = register_module("conv3", conv1x1(width, options.planes() * expansion));
  bn3 = Norm2d(register_module("bn3", make_norm(options.norm_layer(), options.planes() * expansion)));
  relu = register_module("relu", nn::ReLU(nn::ReLUOptions(true)));
  if (downsample_) downsample = register_module("downsample", downsample_);
}

torch::Tensor BottleneckImpl::forward(const torch::Tensor& x) {
  auto out = fold1_.with_relu(*conv1, bn1, *relu, x);
  out = fold2_.with_relu(*conv2, bn2, *relu, out);
  out = fold3_(*conv3, bn3, out);
  out += downsample ? fold_downsample_(*downsample, x) : x;
  return relu(out);
}

void BottleneckImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module> module) {
  if (name == "conv1") return assign_child(*this, name, conv1, module);
  if (name == "conv2") return assign_child(*this, name, conv2, module);
  if (name == "conv3") return assign_child(*this, name, conv3, module);
  if (name == "bn1") return assign_child(*this, name, bn1, module);
  if (name == "bn2") return assign_child(*this, name, bn2, module);
  if (name == "bn3") return assign_child(*this, name, bn3, module);
  if (name == "relu") return assign_child(*this, name, relu, module);
  if (name == "downsample" && downsample) return assign_child(*this, name, downsample, module);
  TORCH_CHECK_VALUE(false, "Bottleneck has no replaceable child '", name, "'");
}

ResNetImpl::ResNetImpl(const ResNetOptions& options_) : options(options_) {
  TORCH_CHECK_VALUE(options.layers().size() == 4, "ResNet needs 4 layer counts, got ", options.layers().size());
  const auto& dilate = options.replace_stride_with_dilation();
  TORCH_CHECK_VALUE(dilate.size() == 3,
                    "replace_stride_with_dilation should be None or a 3-element tuple, got ", dilate.size(), " elements");
  TORCH_CHECK_VALUE(options.num_classes() > 0, "num_classes must be positive, got ", options.num_classes());
  const int64_t expansion = options.block() == BlockType::Basic ? BasicBlockImpl::expansion : BottleneckImpl::expansion;

  conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(3, inplanes_, 7).stride(2).padding(3).bias(false)));
  bn1 = Norm2d(register_module("bn1", make_norm(options.norm_layer(), inplanes_)));
  relu = register_module("relu", nn::ReLU(nn::ReLUOptions(true)));
  maxpool = register_module("maxpool", nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2).padding(1)));
  layer1 = register_module("layer1", make_layer(64, options.layers()[0], 1, false));
  layer2 = register_module("layer2", make_layer(128, options.layers()[1], 2, dilate[0]));
  layer3 = register_module("layer3", make_layer(256, options.layers()[2], 2, dilate[1]));
  layer4 = register_module("layer4", make_layer(512, options.layers()[3], 2, dilate[2]));
  avgpool = register_module("avgpool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
  num_features_ = 512 * expansion;
  fc = register_module("fc", nn::Linear(num_features_, options.num_classes()));
  reset_parameters();
}

nn::Sequential ResNetImpl::make_layer(int64_t planes, int64_t blocks, int64_t stride, bool dilate) {
  const bool basic = options.block() == BlockType::Basic;
  const int64_t expansion = basic ? BasicBlockImpl::expansion : BottleneckImpl::expansion;
  const int64_t previous_dilation = dilation_;
  if (dilate) {
    dilation_ *= stride;
    stride = 1;
  }
  nn::Sequential downsample{nullptr};
  if (stride != 1 || inplanes_ != planes * expansion) {
    downsample = nn::Sequential();
    downsample->push_back(conv1x1(inplanes_, planes * expansion, stride));
    downsample->push_back(to_any_module(make_norm(options.norm_layer(), planes * expansion)));
  }
  auto block = [&](const BlockOptions& opt, nn::Sequential ds) -> nn::AnyModule {
    if (basic) return nn::AnyModule(BasicBlock(opt, ds));
    return nn::AnyModule(Bottleneck(opt, ds));
  };
  nn::Sequential layer;
  layer->push_back(block(BlockOptions(inplanes_, planes)
                             .stride(stride)
                             .groups(options.groups())
                             .base_width(options.width_per_group())
                             .dilation(previous_dilation)
                             .norm_layer(options.norm_layer()),
                         downsample));
  inplanes_ = planes * expansion;
  for (int64_t i = 1; i < blocks; ++i) {
    layer->push_back(block(BlockOptions(inplanes_, planes)
                               .groups(options.groups())
                               .base_width(options.width_per_group())
                               .dilation(dilation_)
                               .norm_layer(options.norm_layer()),
                           nullptr));
  }
  return layer;
}

void ResNetImpl::reset_parameters() {
  // The second pass of torchvision's ResNet.__init__, after every layer drew its default init in
  // construction order: same draws in the same order, so a seeded build equals torchvision's.
  torch::NoGradGuard no_grad;
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* conv = module->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* bn = module->as<nn::BatchNorm2d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
    }
  }
  if (options.zero_init_residual()) {
    for (auto& module : modules(false)) {
      if (auto* block = module->as<Bottleneck>()) nn::init::zeros_(block->bn3.weight());
      if (auto* block = module->as<BasicBlock>()) nn::init::zeros_(block->bn2.weight());
    }
  }
}

torch::Tensor ResNetImpl::forward(const torch::Tensor& x) { return forward_head(forward_features(x)); }

torch::Tensor ResNetImpl::forward_features(const torch::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == conv1->options.in_channels(), "ResNet expects an N x ",
                    conv1->options.in_channels(), " x H x W batch, got shape ", x.sizes());
  FiniteInputScope finite_input(x);
  auto out = maxpool(fold1_.with_relu(*conv1, bn1, *relu, to_fast_layout(x)));
  out = layer4->forward(layer3->forward(layer2->forward(layer1->forward(out))));
  return torch::flatten(avgpool(out), 1);
}

torch::Tensor ResNetImpl::forward_head(const torch::Tensor& features) { return fc ? fc(features) : head_(features); }

void ResNetImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module> module) {
  if (name == "conv1") return assign_child(*this, name, conv1, module);
  if (name == "bn1") return assign_child(*this, name, bn1, module);
  if (name == "relu") return assign_child(*this, name, relu, module);
  if (name == "maxpool") return assign_child(*this, name, maxpool, module);
  if (name == "layer1") return assign_child(*this, name, layer1, module);
  if (name == "layer2") return assign_child(*this, name, layer2, module);
  if (name == "layer3") return assign_child(*this, name, layer3, module);
  if (name == "layer4") return assign_child(*this, name, layer4, module);
  if (name == "avgpool") return assign_child(*this, name, avgpool, module);
  if (name == "fc") {
    head_ = tensor_forward(module);  // throws for modules it cannot run
    fc = nn::Linear(std::dynamic_pointer_cast<nn::LinearImpl>(module));
    replace_module(name, module);
    return;
  }
  TORCH_CHECK_VALUE(false, "ResNet has no child '", name, "'");
}

void ResNetImpl::reset_classifier(int64_t num_classes) {
  TORCH_CHECK_VALUE(num_classes > 0, "num_classes must be positive, got ", num_classes);
  nn::Linear head(num_features_, num_classes);
  head->to(conv1->weight.device(), conv1->weight.scalar_type());
  fc = replace_module("fc", head);
  options.num_classes(num_classes);
}

namespace {

struct Preset {
  const char* name;
  BlockType block;
  std::vector<int64_t> layers;
  int64_t groups;
  int64_t width_per_group;
};

const std::vector<Preset>& presets() {
  static const std::vector<Preset> table = {
      {"resnet18", BlockType::Basic, {2, 2, 2, 2}, 1, 64},
      {"resnet34", BlockType::Basic, {3, 4, 6, 3}, 1, 64},
      {"resnet50", BlockType::Bottleneck, {3, 4, 6, 3}, 1, 64},
      {"resnet101", BlockType::Bottleneck, {3, 4, 23, 3}, 1, 64},
      {"resnet152", BlockType::Bottleneck, {3, 8, 36, 3}, 1, 64},
      {"resnext50_32x4d", BlockType::Bottleneck, {3, 4, 6, 3}, 32, 4},
      {"resnext101_32x8d", BlockType::Bottleneck, {3, 4, 23, 3}, 32, 8},
      {"resnext101_64x4d", BlockType::Bottleneck, {3, 4, 23, 3}, 64, 4},
      {"wide_resnet50_2", BlockType::Bottleneck, {3, 4, 6, 3}, 1, 128},
      {"wide_resnet101_2", BlockType::Bottleneck, {3, 4, 23, 3}, 1, 128},
  };
  return table;
}

}  // namespace

const std::vector<std::string>& resnet_architectures() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& p : presets()) out.emplace_back(p.name);
    return out;
  }();
  return names;
}

ResNetOptions resnet_options(const std::string& arch) {
  for (const auto& p : presets()) {
    if (arch == p.name) return ResNetOptions(p.block, p.layers).groups(p.groups).width_per_group(p.width_per_group);
  }
  std::ostringstream known;
  for (const auto& name : resnet_architectures()) known << " " << name;
  TORCH_CHECK_VALUE(false, "unknown ResNet architecture '", arch, "'; known:", known.str());
}

}  // namespace torchtl::models
