#pragma once
// torch.nn.SyncBatchNorm for the C++ loops: batch norm whose training statistics are those of the
// global batch, over every rank of a c10d process group, so N ranks with batch B normalise as one
// process with batch N*B does. torch's own module runs on GPUs only; this one runs wherever the
// group's backend does (gloo on the CPU, nccl on CUDA).
#include <torch/nn.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <memory>
#include <string>
#include <vector>

namespace torchtl::models {

// Like torch.nn.SyncBatchNorm: in training with a group of more than one rank, the mean and
// (biased) variance come from every rank's batch, the running statistics take the global unbiased
// variance, and backward all-reduces the sums of the output gradient that the input's gradient
// needs. In evaluation, or without such a group, it computes exactly what BatchNorm2d does.
// Parameter and buffer names are BatchNorm2d's, so state dicts are unchanged.
class SyncBatchNormImpl : public torch::nn::Cloneable<SyncBatchNormImpl> {
 public:
  explicit SyncBatchNormImpl(const torch::nn::BatchNormOptions& options,
                             c10::intrusive_ptr<c10d::ProcessGroup> process_group = {});
  // convert_sync_batchnorm's conversion of one layer: `bn`'s options and its very tensors (not
  // copies), so optimizers, the Python face and the original layer all see the updates.
  SyncBatchNormImpl(const torch::nn::BatchNorm2dImpl& bn, c10::intrusive_ptr<c10d::ProcessGroup> process_group);

  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);
  void pretty_print(std::ostream& stream) const override;

  torch::nn::BatchNormOptions options;
  // Null: one process.
  c10::intrusive_ptr<c10d::ProcessGroup> process_group;
  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  void register_tensors(torch::Tensor weight, torch::Tensor bias, torch::Tensor running_mean, torch::Tensor running_var,
                        torch::Tensor num_batches_tracked);
};
TORCH_MODULE(SyncBatchNorm);

// torch.nn.SyncBatchNorm.convert_sync_batchnorm for a scope: every BatchNorm2d in `model` that is
// in training mode when the scope opens is replaced by a SyncBatchNorm over its own tensors, and
// put back when it closes. Layers in eval mode (a frozen backbone) keep running as they are, so
// evaluation after the scope still folds them into their convolutions on the fast path.
class SyncBatchNormScope {
 public:
  SyncBatchNormScope(torch::nn::Module& model, c10::intrusive_ptr<c10d::ProcessGroup> process_group);
  ~SyncBatchNormScope();
  SyncBatchNormScope(const SyncBatchNormScope&) = delete;
  SyncBatchNormScope& operator=(const SyncBatchNormScope&) = delete;

  // How many layers were converted.
  size_t size() const { return swapped_.size(); }

 private:
  struct Swap {
    torch::nn::Module* parent;
    std::string name;
    std::shared_ptr<torch::nn::Module> original;
  };
  void restore();
  std::vector<Swap> swapped_;
};

}  // namespace torchtl::models
