#pragma once
// The metrics of torchvision's references, computed the same way: top-k accuracy for
// classification and the confusion-matrix segmentation metrics (utils.ConfusionMatrix).
#include <torch/torch.h>

#include <vector>

namespace torchtl::engine {

// Number of rows of `logits` (N x C) whose target is among the k highest scores, for each k.
std::vector<int64_t> topk_correct(const torch::Tensor& logits, const torch::Tensor& target, const std::vector<int64_t>& ks);

class ConfusionMatrix {
 public:
  explicit ConfusionMatrix(int64_t num_classes);

  // Targets outside [0, num_classes) (the ignore index 255) are not counted.
  void update(const torch::Tensor& target, const torch::Tensor& prediction);
  void reset();

  struct Result {
    double pixel_accuracy;             // diag.sum() / h.sum()
    std::vector<double> class_accuracy;  // diag / h.sum(1)
    std::vector<double> iou;           // diag / (h.sum(1) + h.sum(0) - diag); NaN for an absent class
    // Mean over the classes present in the target or the prediction: a class absent from both
    // has no IoU, and averaging its NaN in (as the references do) would make the mean NaN.
    // NaN only when no pixel was counted at all.
    double mean_iou;
  };
  Result compute() const;
  const torch::Tensor& matrix() const { return matrix_; }  // int64, rows: target, columns: prediction
  int64_t num_classes() const { return num_classes_; }

 private:
  int64_t num_classes_;
  torch::Tensor matrix_;
};

}  // namespace torchtl::engine
