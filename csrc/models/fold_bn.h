#pragma once
// A Conv2d followed by an eval-mode BatchNorm2d, run as one convolution whose weight and bias
// absorb the normalisation (torch.nn.utils.fusion.fuse_conv_bn_weights): one pass over the
// activations fewer per pair, in channels_last.
//
// The folded weights are computed once and kept until a source tensor changes: each of the
// conv's and the batch norm's parameters and buffers is checked by identity, version counter
// (every in-place write bumps it: optimizer steps, load_state_dict, copy_) and storage (so
// `.data =` and `.to()` count too). They are used only where nothing needs their gradient:
// eval mode, not in exact mode, and autograd off (or no source tensor requires grad); training
// mode drops them. Under CPU or CUDA autocast they are kept in the autocast dtype, so the cast
// is not repeated every call.
//
// On the CPU, in fp32 or bf16, the folded convolution runs through oneDNN's fused convolution
// (mkldnn::_convolution_pointwise, what torch.compile's CPU freezing emits) with the weight
// reordered once into oneDNN's blocked layout for the input's shape, and a following ReLU runs
// inside the convolution (with_relu): ATen's conv2d would reorder the weight at every call and
// run the ReLU as a pass of its own.
#include <torch/nn.h>

#include <memory>
#include <mutex>
#include <vector>

#include "models/norm.h"

namespace torchtl::models {

class FoldedConvBN {
 public:
  FoldedConvBN() = default;
  // A copy starts empty: the cache belongs to one module's tensors.
  FoldedConvBN(const FoldedConvBN&) {}
  FoldedConvBN& operator=(const FoldedConvBN&) { return *this; }

  // bn(conv(x)), folded where allowed (see above).
  torch::Tensor operator()(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x);
  // A ResNet norm slot: folded when it holds a BatchNorm2d; a FrozenBatchNorm2d runs as it is.
  torch::Tensor operator()(torch::nn::Conv2dImpl& conv, const Norm2d& norm, const torch::Tensor& x);
  // A torchvision downsample branch, Sequential(conv1x1, BatchNorm2d), folded the same way;
  // any other Sequential (a user's replacement) runs as it is.
  torch::Tensor operator()(torch::nn::SequentialImpl& branch, const torch::Tensor& x);
  // relu(norm(conv(x))), the ReLU fused into the convolution where it runs through oneDNN.
  torch::Tensor with_relu(torch::nn::Conv2dImpl& conv, const Norm2d& norm, torch::nn::ReLUImpl& relu,
                          const torch::Tensor& x);
  // Where modules[i] is a Conv2d directly followed by a BatchNorm2d (and a ReLU), as torchvision's
  // stems and heads lay them out, runs them on x as one folded convolution and returns how many
  // modules that took (2 or 3, at most `max_count`); returns 0, leaving x, anywhere else.
  size_t run_layers(const std::vector<std::shared_ptr<torch::nn::Module>>& modules, size_t i, size_t max_count,
                    torch::Tensor& x);

 private:
  struct Source {
    torch::Tensor tensor;  // held so that its identity cannot be reused by a new tensor
    int64_t version;
    const void* data;
  };
  struct Folded {
    std::vector<Source> sources;
    double eps;
    at::ScalarType dtype;
    torch::Tensor weight, bias;
  };
  std::shared_ptr<const Folded> folded(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, at::ScalarType dtype);
  torch::Tensor conv_bn(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x,
                        torch::nn::ReLUImpl* relu);
  // The folded weight in oneDNN's layout for inputs of `input_size`, reordered once per shape.
  torch::Tensor onednn_weight(const std::shared_ptr<const Folded>& folded, torch::nn::Conv2dImpl& conv,
                              at::IntArrayRef input_size);

  std::mutex mutex_;
  // What is kept for one compute dtype: one entry each for fp32 and bf16 (autocast), so that calls
  // alternating between them do not fold and reorder the weights again every time.
  struct Entry {
    at::ScalarType dtype;
    std::shared_ptr<const Folded> folded;
    std::shared_ptr<const Folded> onednn_source;  // the Folded that onednn_weight was reordered from
    std::vector<int64_t> onednn_input_size;
    torch::Tensor onednn_weight;
  };
  // The entry for `dtype`, made empty if there is none; mutex_ must be held.
  Entry& entry(at::ScalarType dtype);
  std::vector<Entry> entries_;
};

}  // namespace torchtl::models
