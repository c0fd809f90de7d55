#include "data/mixup_cutmix.h"

#include <cmath>
#include <sstream>
#include <vector>

namespace torchtl::data {
namespace {

// Helper names carry an mix_ prefix: csrc/data/ is one translation unit.

// v2's _BaseMixUpCutMix.forward checks, in its order.
void mix_check(const torch::Tensor& images, const torch::Tensor& labels, std::optional<int64_t> num_classes,
               const char* name) {
  TORCH_CHECK_VALUE(labels.dim() == 1 || labels.dim() == 2, name,
                    ": labels should be index based with shape (batch_size,) or probability based with shape "
                    "(batch_size, num_classes), but got a tensor of shape ",
                    labels.sizes(), " instead.");
  TORCH_CHECK_VALUE(!(labels.dim() == 2 && num_classes && labels.size(-1) != *num_classes), name,
                    ": when passing 2D labels, the number of elements in last dimension must match num_classes: ",
                    labels.size(-1), " != ", *num_classes);
  TORCH_CHECK_VALUE(!(labels.dim() == 1 && !num_classes), name,
                    ": num_classes must be passed if the labels are index-based (1D)");
  TORCH_CHECK_VALUE(images.dim() == 4, name, ": expected a batched input with 4 dims, but got ", images.dim(),
                    " dimensions instead.");
  TORCH_CHECK_VALUE(images.size(0) == labels.size(0), name,
                    ": the batch size of the images does not match the batch size of the labels: ", images.size(0),
                    " != ", labels.size(0));
}

// torch.distributions.Beta(tensor([alpha]), tensor([alpha])).sample(()): a two-parameter
// Dirichlet, first column.
double mix_beta(double alpha, at::Generator& generator) {
  const auto concentration = torch::full({1, 2}, alpha, torch::kFloat32);
  return at::_sample_dirichlet(concentration, generator).select(-1, 0).item<double>();
}

// v2's _mixup_label.
torch::Tensor mix_label(const torch::Tensor& labels, std::optional<int64_t> num_classes, double lam) {
  auto label = labels.dim() == 1 ? torch::one_hot(labels, *num_classes) : labels;
  if (!label.is_floating_point()) label = label.to(torch::kFloat32);
  return label.roll(1, 0).mul_(1.0 - lam).add_(label.mul(lam));
}

void mix_check_alpha(double alpha, const char* name) {
  TORCH_CHECK_VALUE(alpha > 0 && std::isfinite(alpha), name, ": alpha must be positive, got ", alpha);
}

}  // namespace

MixedBatch mixup(const torch::Tensor& images, const torch::Tensor& labels, double alpha,
                 std::optional<int64_t> num_classes, at::Generator& generator) {
  mix_check_alpha(alpha, "MixUp");
  mix_check(images, labels, num_classes, "MixUp");
  const double lam = mix_beta(alpha, generator);
  auto mixed_labels = mix_label(labels, num_classes, lam);
  auto mixed = images.roll(1, 0).mul_(1.0 - lam).add_(images.mul(lam));
  return {mixed, mixed_labels};
}

MixedBatch cutmix(const torch::Tensor& images, const torch::Tensor& labels, double alpha,
                  std::optional<int64_t> num_classes, at::Generator& generator) {
  mix_check_alpha(alpha, "CutMix");
  mix_check(images, labels, num_classes, "CutMix");
  const double lam = mix_beta(alpha, generator);
  const int64_t H = images.size(-2), W = images.size(-1);
  const int64_t r_x = torch::randint(W, {1}, generator).item<int64_t>();
  const int64_t r_y = torch::randint(H, {1}, generator).item<int64_t>();
  const double r = 0.5 * std::sqrt(1.0 - lam);
  const auto r_w_half = static_cast<int64_t>(r * W), r_h_half = static_cast<int64_t>(r * H);
  const int64_t x1 = std::max<int64_t>(r_x - r_w_half, 0), y1 = std::max<int64_t>(r_y - r_h_half, 0);
  const int64_t x2 = std::min<int64_t>(r_x + r_w_half, W), y2 = std::min<int64_t>(r_y + r_h_half, H);
  const double lam_adjusted =
      1.0 - static_cast<double>((x2 - x1) * (y2 - y1)) / static_cast<double>(W * H);
  auto mixed_labels = mix_label(labels, num_classes, lam_adjusted);
  auto rolled = images.roll(1, 0);
  auto mixed = images.clone();
  mixed.slice(-2, y1, y2).slice(-1, x1, x2).copy_(rolled.slice(-2, y1, y2).slice(-1, x1, x2));
  return {mixed, mixed_labels};
}

MixUpCutMix::MixUpCutMix(MixUpCutMixOptions options) : options_(std::move(options)) {
  TORCH_CHECK_VALUE(options_.mixup_alpha() >= 0 && options_.cutmix_alpha() >= 0,
                    "mixup_alpha and cutmix_alpha must be >= 0, got ", options_.mixup_alpha(), " and ",
                    options_.cutmix_alpha());
  TORCH_CHECK_VALUE(!options_.num_classes() || *options_.num_classes() > 0, "num_classes must be positive, got ",
                    options_.num_classes().value_or(0));
}

MixedBatch MixUpCutMix::operator()(const torch::Tensor& images, const torch::Tensor& labels,
                                   at::Generator& generator) const {
  const auto& o = options_;
  TORCH_CHECK_VALUE(enabled(), "MixUpCutMix: mixup_alpha and cutmix_alpha are both 0, so there is nothing to apply");
  std::vector<int> choices;  // 0: MixUp, 1: CutMix, in get_mixup_cutmix's order
  if (o.mixup_alpha() > 0) choices.push_back(0);
  if (o.cutmix_alpha() > 0) choices.push_back(1);
  // v2.RandomChoice(p=None): torch.multinomial(torch.tensor([1 / n] * n), 1).
  const auto p = torch::tensor(std::vector<double>(choices.size(), 1.0 / static_cast<double>(choices.size())),
                               torch::TensorOptions().dtype(torch::kFloat64))
                     .to(torch::kFloat32);
  const auto index = torch::multinomial(p, 1, false, generator).item<int64_t>();
  if (choices[static_cast<size_t>(index)] == 0) return mixup(images, labels, o.mixup_alpha(), o.num_classes(), generator);
  return cutmix(images, labels, o.cutmix_alpha(), o.num_classes(), generator);
}

std::string MixUpCutMix::repr() const {
  std::ostringstream out;
  out << "RandomChoice(";
  bool first = true;
  const auto classes = options_.num_classes() ? std::to_string(*options_.num_classes()) : std::string("None");
  if (options_.mixup_alpha() > 0) {
    out << "MixUp(alpha=" << options_.mixup_alpha() << ", num_classes=" << classes << ")";
    first = false;
  }
  if (options_.cutmix_alpha() > 0) {
    out << (first ? "" : ", ") << "CutMix(alpha=" << options_.cutmix_alpha() << ", num_classes=" << classes << ")";
  }
  out << ")";
  return out.str();
}

}  // namespace torchtl::data
