#include "models/segmentation.h"

#include "models/fast_path.h"
#include "models/resnet.h"

namespace torchtl::models {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

namespace {

torch::Tensor upsample_to(const torch::Tensor& x, at::IntArrayRef size) {
  return F::interpolate(x, F::InterpolateFuncOptions()
                               .size(std::vector<int64_t>(size.begin(), size.end()))
                               .mode(torch::kBilinear)
                               .align_corners(false));
}

nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t padding = 0, int64_t dilation = 1, bool bias = false) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).padding(padding).dilation(dilation).bias(bias));
}

}  // namespace

// The heads are filled with push_back, one statement per layer: the order of function arguments is
// unspecified in C++, and the layers must draw their default initialisation in torchvision's order.
ASPPConvImpl::ASPPConvImpl(int64_t in_channels, int64_t out_channels, int64_t dilation) {
  push_back(conv(in_channels, out_channels, 3, dilation, dilation));
  push_back(nn::BatchNorm2d(out_channels));
  push_back(nn::ReLU());
}

ASPPPoolingImpl::ASPPPoolingImpl(int64_t in_channels, int64_t out_channels) {
  push_back(nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
  push_back(conv(in_channels, out_channels, 1));
  push_back(nn::BatchNorm2d(out_channels));
  push_back(nn::ReLU());
}

torch::Tensor ASPPPoolingImpl::forward(const torch::Tensor& x) {
  // torch.nn.BatchNorm2d raises ValueError for one value per channel in training; so does torchvision here.
  TORCH_CHECK_VALUE(!is_training() || x.size(0) > 1,
                    "Expected more than 1 value per channel when training, got a batch of 1 at ASPPPooling's 1x1 features");
  return upsample_to(SequentialImpl::forward(x), x.sizes().slice(2));
}

void ASPPPoolingImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module> module) {
  // Sequential's own swap; this override only makes the pooling branch reachable as an
  // EditableContainer.
  torchtl::models::replace_child(static_cast<SequentialImpl&>(*this), name, std::move(module));
}

ASPPImpl::ASPPImpl(int64_t in_channels, std::vector<int64_t> atrous_rates, int64_t out_channels) {
  convs = nn::ModuleList();
  convs->push_back(nn::Sequential(conv(in_channels, out_channels, 1), nn::BatchNorm2d(out_channels), nn::ReLU()));
  for (int64_t rate : atrous_rates) convs->push_back(ASPPConv(in_channels, out_channels, rate));
  convs->push_back(ASPPPooling(in_channels, out_channels));
  register_module("convs", convs);
  project = register_module(
      "project", nn::Sequential(conv(static_cast<int64_t>(convs->size()) * out_channels, out_channels, 1),
                                nn::BatchNorm2d(out_channels), nn::ReLU(), nn::Dropout(0.5)));
  for (const auto& branch : convs->children()) branches_.push_back(tensor_forward(branch));
  project_forward_ = tensor_forward(project.ptr());
}

torch::Tensor ASPPImpl::forward(const torch::Tensor& x) {
  std::vector<torch::Tensor> results;
  results.reserve(branches_.size());
  for (const auto& branch : branches_) results.push_back(branch(x));
  return project_forward_(torch::cat(results, 1));
}

void ASPPImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module> module) {
  if (name == "project") {
    assign_child(*this, name, project, module);
    project_forward_ = tensor_forward(project.ptr());
    return;
  }
  TORCH_CHECK_VALUE(false, "ASPP has no replaceable child '", name, "'");
}

DeepLabHeadImpl::DeepLabHeadImpl(int64_t in_channels, int64_t num_classes, std::vector<int64_t> atrous_rates) {
  push_back(ASPP(in_channels, std::move(atrous_rates)));
  push_back(conv(256, 256, 3, 1));
  push_back(nn::BatchNorm2d(256));
  push_back(nn::ReLU());
  push_back(conv(256, num_classes, 1, 0, 1, /*bias=*/true));
}

FCNHeadImpl::FCNHeadImpl(int64_t in_channels, int64_t channels) {
  push_back(conv(in_channels, in_channels / 4, 3, 1));
  push_back(nn::BatchNorm2d(in_channels / 4));
  push_back(nn::ReLU());
  push_back(nn::Dropout(0.1));
  push_back(conv(in_channels / 4, channels, 1, 0, 1, /*bias=*/true));
}

SegmentationModelImpl::SegmentationModelImpl(IntermediateLayerGetter backbone_,
                                             std::shared_ptr<nn::Module> classifier_,
                                             std::shared_ptr<nn::Module> aux_classifier_) {
  backbone = register_module("backbone", backbone_);
  classifier = register_module("classifier", classifier_);
  classifier_forward_ = tensor_forward(classifier);
  if (aux_classifier_) {
    aux_classifier = register_module("aux_classifier", aux_classifier_);
    aux_forward_ = tensor_forward(aux_classifier);
  }
}

torch::OrderedDict<std::string, torch::Tensor> SegmentationModelImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 4, name(), " expects an N x C x H x W batch, got shape ", x.sizes());
  FiniteInputScope finite_input(x);
  auto out = forward_heads(backbone->forward(to_fast_layout(x)), x.sizes().slice(2));
  for (auto& item : out) item.value() = to_caller_layout(item.value(), x);
  return out;
}

torch::OrderedDict<std::string, torch::Tensor> SegmentationModelImpl::forward_heads(
    const torch::OrderedDict<std::string, torch::Tensor>& features, at::IntArrayRef size) {
  torch::OrderedDict<std::string, torch::Tensor> result;
  result.insert("out", upsample_to(classifier_forward_(features["out"]), size));
  if (aux_classifier) {
    const torch::Tensor* aux = features.find("aux");
    TORCH_CHECK_VALUE(aux != nullptr, "the backbone returns no 'aux' features for aux_classifier");
    result.insert("aux", upsample_to(aux_forward_(*aux), size));
  }
  return result;
}

torch::Tensor SegmentationModelImpl::forward_as_tensor(const torch::Tensor& x) { return forward(x)["out"]; }

void SegmentationModelImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module> module) {
  if (name == "backbone") return assign_child(*this, name, backbone, module);
  if (name == "classifier") {
    classifier_forward_ = tensor_forward(module);
    classifier = replace_module(name, module);
    return;
  }
  if (name == "aux_classifier" && aux_classifier) {
    aux_forward_ = tensor_forward(module);
    aux_classifier = replace_module(name, module);
    return;
  }
  TORCH_CHECK_VALUE(false, this->name(), " has no replaceable child '", name, "'");
}

namespace {

IntermediateLayerGetter dilated_backbone(const std::string& arch, bool aux_loss) {
  TORCH_CHECK_VALUE(arch == "resnet50" || arch == "resnet101", "segmentation backbones are resnet50 and resnet101, got '",
                    arch, "'");
  ResNet resnet(resnet_options(arch).replace_stride_with_dilation({false, true, true}));
  ReturnLayers layers{{"layer4", "out"}};
  if (aux_loss) layers.emplace_back("layer3", "aux");
  return IntermediateLayerGetter(resnet.ptr(), layers);
}

}  // namespace

// Backbone, aux head, classifier: torchvision's construction order, so seeded draws match.
DeepLabV3 deeplabv3_resnet(const std::string& backbone, int64_t num_classes, bool aux_loss) {
  auto features = dilated_backbone(backbone, aux_loss);
  auto aux = aux_loss ? FCNHead(1024, num_classes).ptr() : nullptr;
  auto head = DeepLabHead(2048, num_classes).ptr();
  return DeepLabV3(features, head, aux);
}

FCN fcn_resnet(const std::string& backbone, int64_t num_classes, bool aux_loss) {
  auto features = dilated_backbone(backbone, aux_loss);
  auto aux = aux_loss ? FCNHead(1024, num_classes).ptr() : nullptr;
  auto head = FCNHead(2048, num_classes).ptr();
  return FCN(features, head, aux);
}

}  // namespace torchtl::models
