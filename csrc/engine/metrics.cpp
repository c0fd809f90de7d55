#include "engine/metrics.h"

#include <limits>

namespace torchtl::engine {

std::vector<int64_t> topk_correct(const torch::Tensor& logits, const torch::Tensor& target, const std::vector<int64_t>& ks) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && target.dim() == 1 && logits.size(0) == target.size(0),
                    "topk_correct expects N x C logits and N targets, got ", logits.sizes(), " and ", target.sizes());
  torch::NoGradGuard no_grad;
  int64_t max_k = 1;
  for (auto k : ks) max_k = std::max(max_k, k);
  max_k = std::min(max_k, logits.size(1));
  auto pred = std::get<1>(logits.topk(max_k, 1, true, true));
  auto correct = pred.eq(target.view({-1, 1}).to(pred.device()));
  std::vector<int64_t> out;
  for (auto k : ks) out.push_back(correct.narrow(1, 0, std::min(k, max_k)).sum().item<int64_t>());
  return out;
}

ConfusionMatrix::ConfusionMatrix(int64_t num_classes) : num_classes_(num_classes) {
  TORCH_CHECK_VALUE(num_classes > 0, "ConfusionMatrix needs num_classes > 0, got ", num_classes);
  reset();
}

void ConfusionMatrix::reset() { matrix_ = torch::zeros({num_classes_, num_classes_}, torch::kInt64); }

void ConfusionMatrix::update(const torch::Tensor& target, const torch::Tensor& prediction) {
  torch::NoGradGuard no_grad;
  auto a = target.flatten().to(torch::kInt64);
  auto b = prediction.flatten().to(a.device(), torch::kInt64);
  auto keep = (a >= 0).logical_and(a < num_classes_);
  auto index = num_classes_ * a.masked_select(keep) + b.masked_select(keep);
  matrix_ += torch::bincount(index, {}, num_classes_ * num_classes_).reshape({num_classes_, num_classes_}).cpu();
}

ConfusionMatrix::Result ConfusionMatrix::compute() const {
  auto h = matrix_.to(torch::kFloat64);
  auto diag = h.diag();
  Result r;
  r.pixel_accuracy = (diag.sum() / h.sum()).item<double>();
  auto acc = diag / h.sum(1);
  const auto union_ = h.sum(1) + h.sum(0) - diag;
  auto iou = diag / union_;
  r.class_accuracy.assign(acc.data_ptr<double>(), acc.data_ptr<double>() + num_classes_);
  r.iou.assign(iou.data_ptr<double>(), iou.data_ptr<double>() + num_classes_);
  const auto present = union_ > 0;
  r.mean_iou = present.any().item<bool>() ? iou.masked_select(present).mean().item<double>()
                                          : std::numeric_limits<double>::quiet_NaN();
  return r;
}

}  // namespace torchtl::engine
