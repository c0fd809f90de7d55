#include "engine/train_one_epoch.h"

#include <cmath>

#include "engine/losses.h"
#include "engine/metrics.h"
#include "models/sync_batch_norm.h"

namespace torchtl::engine {

namespace {

// One optimizer step on a batch; false when its loss was not finite on some rank (the step is
// skipped on every rank, as GradScaler skips one).
bool train_step(Training& t, const DeviceBatch& batch, const RowNamer& name_row, RunState& state, int64_t epoch,
                EpochRecord& record, double& loss_sum, int64_t& correct, const WarningFn& warning) {
  const auto& o = t.options;
  auto& view = t.model;
  for (size_t g = 0; g < t.optimizer.param_groups().size(); ++g) {
    t.optimizer.param_groups()[g].options().set_lr(t.schedule.lr(state.iteration, t.base_lrs[g]));
  }
  record.lr = t.schedule.lr(state.iteration, t.base_lrs.front());
  t.optimizer.zero_grad();
  const auto& input = batch.input;
  torch::Tensor loss, logits;
  {
    AutocastScope autocast(t.amp_dtype, t.device);
    if (view.segments()) {
      torch::OrderedDict<std::string, torch::Tensor> out;
      if (t.feature_extractor && view.segmentation) {
        torch::OrderedDict<std::string, torch::Tensor> features;
        {
          torch::NoGradGuard no_grad;
          features = view.segmentation->backbone->forward(input);
        }
        out = view.segmentation->forward_heads(features, input.sizes().slice(2));
      } else {
        out = view.segment(input);
      }
      loss = segmentation_loss(out, batch.target, o, name_row);
    } else {
      if (batch.input_is_features) {
        logits = view.resnet->forward_head(input);
      } else if (t.feature_extractor && view.resnet) {
        torch::Tensor features;
        {
          torch::NoGradGuard no_grad;
          features = view.resnet->forward_features(input);
        }
        logits = view.resnet->forward_head(features);
      } else {
        logits = view.forward_any(input);
      }
      loss = classification_loss(logits, batch.target, o, name_row);
    }
  }
  const double value = loss.item<double>();
  // Ranks skip a step together: one that skipped its all-reduce would leave the others waiting.
  if (t.distributed.any(!std::isfinite(value))) {
    // Its gradients would make every weight NaN: the step is skipped, as GradScaler skips one.
    ++record.nonfinite_losses;
    ++t.nonfinite_losses;
    ++state.iteration;
    record.step_losses.push_back(value);
    if (t.nonfinite_losses == 1) {
      warn(warning, Warning::NonFiniteLoss,
           c10::str("the loss is ", std::isfinite(value) ? c10::str("non-finite on another rank") : c10::str(value),
                    " at epoch ", epoch + 1, ", step ", record.step_losses.size(),
                    ": its optimizer step is skipped; the run stops at max_nonfinite_losses=",
                    o.max_nonfinite_losses(), " such losses (a smaller lr or clip_grad_norm may help)"));
    }
    TORCH_CHECK(t.nonfinite_losses < o.max_nonfinite_losses(), "training stopped: ", t.nonfinite_losses,
                " non-finite losses (max_nonfinite_losses=", o.max_nonfinite_losses(), "), the last at epoch ",
                epoch + 1, ", step ", record.step_losses.size(),
                "; last.pt holds the last complete epoch, best.pt the best finite model");
    return false;
  }
  t.scaler.scaled(loss).backward();
  t.distributed.all_reduce_gradients(t.params);
  if (t.scaler.unscale(t.params)) {
    if (o.clip_grad_norm() > 0) torch::nn::utils::clip_grad_norm_(t.params, o.clip_grad_norm());
    t.optimizer.step();
  }
  t.scaler.update();
  ++state.iteration;
  record.step_losses.push_back(value);
  loss_sum += value * input.size(0);
  record.images += input.size(0);
  if (logits.defined()) correct += topk_correct(logits.detach(), batch.target, {1})[0];
  return true;
}

}  // namespace

EpochRecord train_one_epoch(Training& t, const BatchSource& train, int64_t epoch, FeatureCache* cache,
                            RunState& state, const ProgressFn& progress, const WarningFn& warning, bool& stopped) {
  auto& model = *t.model.root;
  model.train();
  if (t.feature_extractor) {
    model.eval();
    for (auto& h : t.heads) h->train();
  }
  // torch.nn.SyncBatchNorm.convert_sync_batchnorm for the training pass only: evaluation and
  // checkpoints see the model's own BatchNorm2d layers, over the same tensors.
  std::optional<models::SyncBatchNormScope> sync_bn;
  if (t.options.sync_bn()) {
    sync_bn.emplace(model, t.options.process_group());
    TORCH_CHECK_VALUE(sync_bn->size() > 0, "sync_bn=True, but no BatchNorm2d of the model trains in ",
                      t.options.mode(), " mode: its norm layers are FrozenBatchNorm2d, or frozen with the backbone in ",
                      "feature_extractor mode, or run in Python (a model whose forward is Python's can hold ",
                      "torch.nn.SyncBatchNorm layers itself)");
  }
  EpochRecord record;
  record.epoch = epoch;
  const auto start = std::chrono::steady_clock::now();
  const auto num_batches = train.num_batches();
  double loss_sum = 0.0;
  int64_t correct = 0, batch_index = 0;
  ProgressThrottle throttle;
  stopped = false;
  DeviceBatches batches(train, static_cast<uint64_t>(epoch), t.device, cache,
                        [&t](const torch::Tensor& x) { return t.model.resnet->forward_features(x); });
  record.used_feature_cache = batches.from_cache();
  while (auto batch = batches.next(record.skipped)) {
    train_step(t, *batch, row_namer(train.loader(), &batch->indices), state, epoch, record, loss_sum, correct, warning);
    ++batch_index;
    if (progress && throttle.due(batch_index == num_batches)) {
      Progress p{true, epoch, t.options.epochs(), batch_index, num_batches, record.images, loss_sum / record.images,
                 t.model.segments() ? -1.0 : static_cast<double>(correct) / record.images};
      if (!progress(p)) stopped = true;
    }
    stopped = t.distributed.any(stopped);
    if (stopped) break;
  }
  sync_bn.reset();
  // The history is the whole run's: every rank's batches, and rank 0's batch-norm statistics
  // (DistributedDataParallel's broadcast_buffers, which leaves every rank with rank 0's).
  const auto totals =
      t.distributed.all_reduce_sum({loss_sum, static_cast<double>(record.images), static_cast<double>(correct)});
  loss_sum = totals[0];
  record.images = static_cast<int64_t>(totals[1]);
  correct = static_cast<int64_t>(totals[2]);
  // Training on nothing is no training: with on_error="skip", a map file whose every image is
  // unreadable would otherwise "train" every epoch on 0 images and checkpoint the untouched model.
  TORCH_CHECK_VALUE(record.images > 0 || stopped, "epoch ", epoch + 1, ": no training batch was usable: ",
                    record.skipped.empty() ? std::string("the training data yielded no sample")
                                           : c10::str("all ", record.skipped.size(),
                                                      " samples were skipped by on_error=\"skip\" (the first: ",
                                                      record.skipped.front(), ")"),
                    "; nothing was trained");
  record.step_losses = t.distributed.all_reduce_mean(record.step_losses);
  if (!t.feature_extractor) t.distributed.broadcast(model.buffers());
  record.seconds = seconds_since(start);
  record.train_loss = record.images ? loss_sum / record.images : 0.0;
  record.train_acc =
      t.model.segments() ? -1.0 : (record.images ? static_cast<double>(correct) / record.images : 0.0);
  record.images_per_second = record.seconds > 0 ? record.images / record.seconds : 0.0;
  warn_skipped(warning, record.skipped, c10::str("epoch ", epoch + 1, " (training)"));
  return record;
}

}  // namespace torchtl::engine
