#pragma once
// torchvision's ResNet family (models/resnet.py) on the LibTorch C++ frontend. Submodules carry
// torchvision's attribute names and registration order, so state dicts are interchangeable.
#include <torch/nn.h>

#include <array>
#include <string>
#include <vector>

#include "models/fold_bn.h"
#include "models/module_tree.h"
#include "models/norm.h"

namespace torchtl::models {

// Arguments shared by BasicBlock and Bottleneck, as torchvision's block constructors take them.
struct BlockOptions {
  BlockOptions(int64_t inplanes, int64_t planes) : inplanes_(inplanes), planes_(planes) {}
  TORCH_ARG(int64_t, inplanes);
  TORCH_ARG(int64_t, planes);
  TORCH_ARG(int64_t, stride) = 1;
  TORCH_ARG(int64_t, groups) = 1;
  TORCH_ARG(int64_t, base_width) = 64;
  TORCH_ARG(int64_t, dilation) = 1;
  TORCH_ARG(NormLayer, norm_layer) = NormLayer::BatchNorm2d;
};

torch::nn::Conv2d conv3x3(int64_t in_planes, int64_t out_planes, int64_t stride = 1, int64_t groups = 1, int64_t dilation = 1);
torch::nn::Conv2d conv1x1(int64_t in_planes, int64_t out_planes, int64_t stride = 1);

class BasicBlockImpl : public torch::nn::Module, public EditableContainer {
 public:
  static constexpr int64_t expansion = 1;
  // `downsample` maps the identity to the block's output shape; null when shapes already agree.
  explicit BasicBlockImpl(const BlockOptions& options, torch::nn::Sequential downsample = nullptr);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  BlockOptions options;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  Norm2d bn1, bn2;
  torch::nn::ReLU relu{nullptr};
  torch::nn::Sequential downsample{nullptr};

 private:
  FoldedConvBN fold1_, fold2_, fold_downsample_;  // eval-mode conv + bn pairs, see fold_bn.h
};
TORCH_MODULE(BasicBlock);

class BottleneckImpl : public torch::nn::Module, public EditableContainer {
 public:
  // torchvision's V1.5 bottleneck: the stride sits on the 3x3 convolution.
  static constexpr int64_t expansion = 4;
  explicit BottleneckImpl(const BlockOptions& options, torch::nn::Sequential downsample = nullptr);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  BlockOptions options;
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  Norm2d bn1, bn2, bn3;
  torch::nn::ReLU relu{nullptr};
  torch::nn::Sequential downsample{nullptr};

 private:
  FoldedConvBN fold1_, fold2_, fold3_, fold_downsample_;  // eval-mode conv + bn pairs, see fold_bn.h
};
TORCH_MODULE(Bottleneck);

enum class BlockType { Basic, Bottleneck };

struct ResNetOptions {
  ResNetOptions(BlockType block, std::vector<int64_t> layers) : block_(block), layers_(std::move(layers)) {}
  TORCH_ARG(BlockType, block);
  TORCH_ARG(std::vector<int64_t>, layers);
  TORCH_ARG(int64_t, num_classes) = 1000;
  // Zero the last BN of each residual branch so every block starts as the identity.
  TORCH_ARG(bool, zero_init_residual) = false;
  TORCH_ARG(int64_t, groups) = 1;
  TORCH_ARG(int64_t, width_per_group) = 64;
  TORCH_ARG(NormLayer, norm_layer) = NormLayer::BatchNorm2d;
  // For layer2..layer4: trade the stride-2 for dilation (the segmentation backbones).
  TORCH_ARG(std::vector<bool>, replace_stride_with_dilation) = std::vector<bool>{false, false, false};
};

class ResNetImpl : public torch::nn::Module, public EditableContainer {
 public:
  explicit ResNetImpl(const ResNetOptions& options);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  // forward() in two parts, for feature extraction: the pooled, flattened N x num_features
  // features, and the head applied to them.
  torch::Tensor forward_features(const torch::Tensor& x);
  torch::Tensor forward_head(const torch::Tensor& features);

  // torchvision's initialisation pass (kaiming-normal convolutions in modules() order, unit
  // BatchNorm, zero_init_residual); fc keeps torch.nn.Linear's default from its constructor.
  void reset_parameters();

  // A fresh Linear head for `num_classes` (default initialisation, the old head's device and
  // dtype): unregister_module/register_module done once here.
  void reset_classifier(int64_t num_classes);

  // Width of the pooled features that `fc` maps to classes (512 * block expansion).
  int64_t num_features() const { return num_features_; }

  ResNetOptions options;
  torch::nn::Conv2d conv1{nullptr};
  Norm2d bn1;
  torch::nn::ReLU relu{nullptr};
  torch::nn::MaxPool2d maxpool{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr}, layer4{nullptr};
  torch::nn::AdaptiveAvgPool2d avgpool{nullptr};
  // The classifier; null when the head was replaced by something other than a Linear
  // (nn.Identity() for features, nn.Sequential(nn.Dropout(), nn.Linear(...)), ...).
  torch::nn::Linear fc{nullptr};

 private:
  torch::nn::Sequential make_layer(int64_t planes, int64_t blocks, int64_t stride, bool dilate);
  TensorForward head_;  // runs a non-Linear head swapped in through replace_child("fc")
  int64_t num_features_ = 0;
  int64_t inplanes_ = 64;
  int64_t dilation_ = 1;
  FoldedConvBN fold1_;  // conv1 + bn1 in eval mode, see fold_bn.h
};
TORCH_MODULE(ResNet);

// torchvision's builders as presets: resnet_options("resnext50_32x4d").num_classes(2), then
// ResNet(options). Unknown names throw, listing the known ones.
ResNetOptions resnet_options(const std::string& arch);
const std::vector<std::string>& resnet_architectures();

}  // namespace torchtl::models
