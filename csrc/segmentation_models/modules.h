#pragma once
// segmentation_models_pytorch's building blocks (base/modules.py, base/heads.py) on the LibTorch
// C++ frontend, with smp's child names so state dicts are interchangeable.
#include <torch/nn.h>

#include <optional>
#include <string>

#include "models/module_tree.h"

namespace torchtl::segmentation_models {

// smp's decoder_use_norm: "batchnorm" (True) or "identity" (False). smp's layernorm,
// instancenorm and inplace-ABN choices are refused by name.
enum class DecoderNorm { BatchNorm, Identity };
DecoderNorm decoder_norm(const std::string& name);

// Conv2d (bias only without a norm) -> norm -> ReLU(inplace), an nn.Sequential as in smp.
class Conv2dReLUImpl : public torch::nn::SequentialImpl {
 public:
  Conv2dReLUImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t padding = 0,
                 int64_t stride = 1, DecoderNorm norm = DecoderNorm::BatchNorm);
};
TORCH_MODULE(Conv2dReLU);

// What smp writes as an nn.Sequential of Sequentials (Linknet's and PSPNet's blocks): children
// "0", "1", ... run in order. LibTorch's Sequential cannot hold another Sequential.
class ModuleChainImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  explicit ModuleChainImpl(const std::vector<std::shared_ptr<torch::nn::Module>>& modules);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

 private:
  std::vector<models::TensorForward> forwards_;
};
TORCH_MODULE(ModuleChain);

// Concurrent spatial and channel squeeze-and-excitation: x * cSE(x) + x * sSE(x).
class SCSEModuleImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  explicit SCSEModuleImpl(int64_t in_channels, int64_t reduction = 16);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

  torch::nn::Sequential cSE{nullptr}, sSE{nullptr};
};
TORCH_MODULE(SCSEModule);

// A child named by its job, as smp's Attention ("attention") and Activation ("activation") hold
// one: the module itself is chosen by name at construction.
class NamedWrapperImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  torch::Tensor forward(const torch::Tensor& x) { return forward_(x); }
  torch::Tensor forward_as_tensor(const torch::Tensor& x) override { return forward(x); }
  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) override;

 protected:
  void set_child(const std::string& name, std::shared_ptr<torch::nn::Module> module);

 private:
  std::string child_;
  models::TensorForward forward_;
};

// smp's Attention: None (Identity) or "scse".
class AttentionImpl : public NamedWrapperImpl {
 public:
  AttentionImpl(const std::optional<std::string>& name, int64_t in_channels);
};
TORCH_MODULE(Attention);

// smp's Activation: None/"identity", "sigmoid", "softmax2d", "softmax", "logsoftmax", "tanh".
class ActivationImpl : public NamedWrapperImpl {
 public:
  explicit ActivationImpl(const std::optional<std::string>& name);
};
TORCH_MODULE(Activation);

// Conv2d -> Upsample (bilinear, align_corners) or Identity -> Activation.
class SegmentationHeadImpl : public torch::nn::SequentialImpl {
 public:
  SegmentationHeadImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size = 3,
                       const std::optional<std::string>& activation = std::nullopt, int64_t upsampling = 1);
};
TORCH_MODULE(SegmentationHead);

// smp's aux_params: pooling "avg" or "max", dropout, classes, activation.
struct ClassificationHeadOptions {
  explicit ClassificationHeadOptions(int64_t classes) : classes_(classes) {}
  TORCH_ARG(int64_t, classes);
  TORCH_ARG(std::string, pooling) = "avg";
  TORCH_ARG(double, dropout) = 0.2;
  TORCH_ARG(std::optional<std::string>, activation) = std::nullopt;
};

// Global pooling -> Flatten -> Dropout(inplace) or Identity -> Linear -> Activation.
class ClassificationHeadImpl : public torch::nn::SequentialImpl {
 public:
  ClassificationHeadImpl(int64_t in_channels, const ClassificationHeadOptions& options);
};
TORCH_MODULE(ClassificationHead);

// smp's initialize_decoder and initialize_head (base/initialization.py).
void initialize_decoder(torch::nn::Module& module);
void initialize_head(torch::nn::Module& module);

}  // namespace torchtl::segmentation_models
