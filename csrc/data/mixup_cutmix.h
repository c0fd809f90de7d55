#pragma once
// torchvision.transforms.v2.MixUp and CutMix on a batch, and the references' choice between them
// (references/classification/transforms.py get_mixup_cutmix: RandomChoice over the ones whose alpha
// is positive). The same ops and the same draws in the same order as v2 from a torch::Generator,
// so a batch mixed with a generator seeded s equals v2's after torch.manual_seed(s).
#include <torch/arg.h>
#include <torch/types.h>

#include <optional>
#include <string>
#include <utility>

namespace torchtl::data {

// (images N x C x H x W, labels as class indices N or probabilities N x num_classes) -> (mixed
// images, N x num_classes float labels). num_classes may be left out for N x K labels only.
using MixedBatch = std::pair<torch::Tensor, torch::Tensor>;

// v2.MixUp(alpha, num_classes): lam ~ Beta(alpha, alpha); each sample blends with the previous one
// in the batch (roll by 1).
MixedBatch mixup(const torch::Tensor& images, const torch::Tensor& labels, double alpha,
                 std::optional<int64_t> num_classes, at::Generator& generator);
// v2.CutMix(alpha, num_classes): a box of area (1 - lam) pasted from the previous sample; labels
// weighed by the box's true area.
MixedBatch cutmix(const torch::Tensor& images, const torch::Tensor& labels, double alpha,
                  std::optional<int64_t> num_classes, at::Generator& generator);

struct MixUpCutMixOptions {
  TORCH_ARG(double, mixup_alpha) = 0.0;
  TORCH_ARG(double, cutmix_alpha) = 0.0;
  TORCH_ARG(std::optional<int64_t>, num_classes) = std::nullopt;
};

// The references' get_mixup_cutmix: v2.RandomChoice([MixUp, CutMix]) over those with alpha > 0,
// so one of the two with p = 0.5 per batch when both are on (a choice is drawn even with one).
class MixUpCutMix {
 public:
  explicit MixUpCutMix(MixUpCutMixOptions options);
  // False when both alphas are 0: the references then mix nothing (and draw nothing).
  bool enabled() const { return options_.mixup_alpha() > 0 || options_.cutmix_alpha() > 0; }
  MixedBatch operator()(const torch::Tensor& images, const torch::Tensor& labels, at::Generator& generator) const;
  const MixUpCutMixOptions& options() const { return options_; }
  std::string repr() const;

 private:
  MixUpCutMixOptions options_;
};

}  // namespace torchtl::data
