#include "engine/losses.h"

namespace torchtl::engine {

namespace F = torch::nn::functional;

RowNamer row_namer(const data::ThreadedLoader* loader, const std::vector<int64_t>* indices) {
  return [loader, indices](int64_t row) {
    if (loader && indices && row < static_cast<int64_t>(indices->size())) {
      return loader->sample_name(static_cast<size_t>((*indices)[row]));
    }
    return c10::str("sample ", row, " of the batch");
  };
}

namespace {

// Targets the model has no class for, named by sample: cross_entropy would only say "Target 7 is
// out of bounds" (or, on CUDA, fail a device-side assert). `ignore_index` values are allowed.
void check_targets(const torch::Tensor& target, int64_t num_classes, int64_t ignore_index, const RowNamer& name_row) {
  auto bad = target.ge(num_classes).logical_or_(target.lt(0)).logical_and_(target.ne(ignore_index));
  if (!bad.any().item<bool>()) return;
  const auto rows = target.dim() > 1 ? bad.flatten(1).any(1) : bad;
  const auto row = rows.nonzero().select(1, 0)[0].item<int64_t>();
  const auto value = target[row].masked_select(bad[row]).max().item<int64_t>();
  TORCH_CHECK_VALUE(false, name_row(row), ": the target holds class ", value, " but the model has ", num_classes,
                    " classes (num_classes mismatch between model and data; values must be in [0, ", num_classes,
                    ")", target.dim() > 1 ? c10::str(" or ignore_index ", ignore_index) : "", ")");
}

}  // namespace

torch::Tensor classification_loss(const torch::Tensor& logits, const torch::Tensor& target, const FitOptions& o,
                                  const RowNamer& name_row) {
  TORCH_CHECK_VALUE(target.dim() == 1, "classification targets must be N class indices, got shape ", target.sizes());
  auto options = F::CrossEntropyFuncOptions().label_smoothing(o.label_smoothing());
  check_targets(target, logits.size(1), options.ignore_index(), name_row);
  if (o.class_weights().defined()) options.weight(o.class_weights().to(logits.device()));
  return F::cross_entropy(logits, target, options);
}

torch::Tensor segmentation_loss(const torch::OrderedDict<std::string, torch::Tensor>& out, const torch::Tensor& target,
                                const FitOptions& o, const RowNamer& name_row) {
  check_targets(target, out["out"].size(1), o.ignore_index(), name_row);
  auto ce = [&](const torch::Tensor& x) {
    auto options = F::CrossEntropyFuncOptions().ignore_index(o.ignore_index());
    if (o.class_weights().defined()) options.weight(o.class_weights().to(x.device()));
    return F::cross_entropy(x, target, options);
  };
  auto loss = ce(out["out"]);
  if (const auto* aux = out.find("aux")) loss = loss + o.aux_weight() * ce(*aux);
  return loss;
}

}  // namespace torchtl::engine
