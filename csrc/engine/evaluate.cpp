#include "engine/evaluate.h"

#include <memory>

#include "engine/amp.h"
#include "engine/losses.h"
#include "engine/metrics.h"
#include "models/fast_path.h"

namespace torchtl::engine {

EvalResult evaluate_one_pass(ModelParts& view, const BatchSource& source, const FitOptions& o, torch::Device device,
                             const Distributed& distributed, int64_t epoch, const ProgressFn& progress,
                             const WarningFn& warning, bool& stopped, FeatureCache* cache) {
  torch::NoGradGuard no_grad;
  view.root->eval();
  EvalResult r;
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<ConfusionMatrix> confusion;
  double loss_sum = 0.0;
  int64_t correct1 = 0, correct5 = 0, batch_index = 0;
  ProgressThrottle throttle;
  const auto dtype = amp_dtype(o.amp(), device);
  const auto num_batches = source.num_batches();
  DeviceBatches batches(source, 0, device, view.resnet ? cache : nullptr,
                        [&view](const torch::Tensor& x) { return view.resnet->forward_features(x); });
  while (auto batch = batches.next(r.skipped)) {
    const auto& x = batch->input;
    const auto& y = batch->target;
    const auto name_row = row_namer(source.loader(), &batch->indices);
    const int64_t n = x.size(0);
    torch::Tensor prediction, loss;
    {
      AutocastScope autocast(dtype, device);
      if (view.segments()) {
        auto out = view.segment(x);
        loss = segmentation_loss(out, y, o, name_row);
        prediction = out["out"].argmax(1);
        if (!confusion) confusion = std::make_unique<ConfusionMatrix>(out["out"].size(1));
      } else {
        auto logits = batch->input_is_features ? view.resnet->forward_head(x) : view.forward_any(x);
        loss = classification_loss(logits, y, o, name_row);
        auto c = topk_correct(logits, y, {1, 5});
        correct1 += c[0];
        correct5 += c[1];
        prediction = logits.argmax(1);
        if (!confusion) confusion = std::make_unique<ConfusionMatrix>(logits.size(1));
      }
    }
    confusion->update(y, prediction);
    loss_sum += loss.item<double>() * n;
    r.images += n;
    ++batch_index;
    if (progress && throttle.due(batch_index == num_batches)) {
      Progress p{false, epoch, o.epochs(), batch_index, num_batches, r.images, loss_sum / r.images,
                 view.segments() ? -1.0 : static_cast<double>(correct1) / r.images};
      if (!progress(p)) {
        stopped = true;
        break;
      }
    }
  }
  warn_skipped(warning, r.skipped, c10::str("evaluation", o.epochs() > 1 || epoch > 0 ? c10::str(" after epoch ", epoch + 1) : ""));
  // The whole validation set's metrics: every rank's counts and confusion matrix, summed. A rank
  // whose shard is empty contributes zeros; one that was stopped stops them all.
  const auto totals = distributed.all_reduce_sum({loss_sum, static_cast<double>(r.images), static_cast<double>(correct1),
                                                  static_cast<double>(correct5), stopped ? 1.0 : 0.0});
  loss_sum = totals[0];
  r.images = static_cast<int64_t>(totals[1]);
  correct1 = static_cast<int64_t>(totals[2]);
  correct5 = static_cast<int64_t>(totals[3]);
  stopped = totals[4] > 0;
  const auto num_classes = distributed.all_reduce_max(confusion ? confusion->num_classes() : 0);
  if (!confusion && num_classes > 0) confusion = std::make_unique<ConfusionMatrix>(num_classes);
  if (confusion) {
    auto matrix = confusion->matrix();  // a handle on the matrix's storage, summed in place
    distributed.all_reduce_sum(matrix);
  }
  TORCH_CHECK_VALUE(r.images > 0, "the evaluation loader yielded no batch (empty map file, drop_last with fewer ",
                    "samples than batch_size, or every sample skipped)");
  r.loss = loss_sum / r.images;
  r.seconds = seconds_since(start);
  r.confusion = confusion->matrix();
  if (view.segments()) {
    auto m = confusion->compute();
    r.pixel_accuracy = m.pixel_accuracy;
    r.mean_iou = m.mean_iou;
    r.iou = m.iou;
  } else {
    r.acc1 = static_cast<double>(correct1) / r.images;
    r.acc5 = static_cast<double>(correct5) / r.images;
  }
  return r;
}

EvalResult evaluate(const std::shared_ptr<torch::nn::Module>& model, const BatchSource& loader,
                    const FitOptions& options, const ProgressFn& progress, const WarningFn& warning) {
  models::ExactModeGuard exact(models::exact_mode() || !options.channels_last());
  ModelParts view(model, options.task());
  const auto device = resolve_device(options.device());
  model->to(device);
  const Distributed distributed(options.process_group(), device);
  const ShardedSource shard(loader, distributed, /*pad=*/false);
  bool stopped = false;
  return evaluate_one_pass(view, shard, options, device, distributed, 0, progress, warning, stopped);
}

EvalResult evaluate(const std::shared_ptr<torch::nn::Module>& model, const data::ThreadedLoader& loader,
                    const FitOptions& options, const ProgressFn& progress, const WarningFn& warning) {
  return evaluate(model, LoaderSource(loader), options, progress, warning);
}

}  // namespace torchtl::engine
