#include "engine/trainer.h"

#include <cmath>
#include <filesystem>
#include <optional>

#include "engine/amp.h"
#include "engine/checkpoint.h"
#include "engine/choices.h"
#include "engine/evaluate.h"
#include "engine/feature_cache.h"
#include "engine/model_parts.h"
#include "engine/optimizer.h"
#include "engine/schedule.h"
#include "engine/train_one_epoch.h"
#include "io/model_file.h"
#include "io/weights.h"
#include "models/fast_path.h"

namespace torchtl::engine {

torch::Device resolve_device(const std::string& device) {
  if (device.empty()) return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  torch::Device d(device);
  TORCH_CHECK_VALUE(!d.is_cuda() || torch::cuda::is_available(), "device '", device, "' asked for, but CUDA is not available");
  return d;
}

FitResult fit(const std::shared_ptr<torch::nn::Module>& model, const data::ThreadedLoader& train,
              const data::ThreadedLoader* val, const FitOptions& o, const ProgressFn& progress,
              const EpochEndFn& epoch_end, const WarningFn& warning) {
  LoaderSource train_source(train);
  std::optional<LoaderSource> val_source;
  if (val) val_source.emplace(*val);
  return fit(model, train_source, val_source ? &*val_source : nullptr, o, progress, epoch_end, warning);
}

FitResult fit(const std::shared_ptr<torch::nn::Module>& model, const BatchSource& unsharded_train,
              const BatchSource* unsharded_val, const FitOptions& o, const ProgressFn& progress,
              const EpochEndFn& epoch_end, const WarningFn& warning) {
  models::ExactModeGuard exact(models::exact_mode() || !o.channels_last());
  // Checked before the first epoch, so bad metadata fails at once rather than at the first best.pt.
  std::optional<io::ModelMetadata> metadata;
  if (!o.model_metadata().empty()) metadata = io::parse_model_metadata(o.model_metadata(), "fit's model_metadata");
  ModelParts view(model, o.task());
  // Each rank trains on an equal share and validates on a disjoint one (exact summed metrics).
  const Distributed distributed(o.process_group(), resolve_device(o.device()));
  const ShardedSource train(unsharded_train, distributed, /*pad=*/true);
  std::optional<ShardedSource> val_shard;
  if (unsharded_val) val_shard.emplace(*unsharded_val, distributed, /*pad=*/false);
  const BatchSource* val = val_shard ? &*val_shard : nullptr;
  check_fit_choice("mode", o.mode());
  TORCH_CHECK_VALUE(o.epochs() > 0, "epochs must be positive, got ", o.epochs());
  TORCH_CHECK_VALUE(o.max_nonfinite_losses() > 0, "max_nonfinite_losses must be positive, got ", o.max_nonfinite_losses());
  const auto iters_per_epoch = static_cast<int64_t>(train.num_batches());
  // Every step all-reduces, so ranks must take as many; a caller-sharded iterable may not.
  const auto most_iters = distributed.all_reduce_max(iters_per_epoch);
  const auto fewest_iters = -distributed.all_reduce_max(-iters_per_epoch);
  TORCH_CHECK_VALUE(most_iters == fewest_iters, "data-parallel training needs as many batches per epoch on every rank, ",
                    "but the ranks' training data yield between ", fewest_iters, " and ", most_iters,
                    " (shard it with a DistributedSampler, whose drop_last=False pads the shards equal)");
  TORCH_CHECK_VALUE(iters_per_epoch > 0, "the training loader yields no batch (empty map file, or drop_last with fewer ",
                    "samples than batch_size)");
  const auto device = resolve_device(o.device());
  const auto dtype = amp_dtype(o.amp(), device);
  const LRSchedule schedule(ScheduleOptions{o.lr_schedule(), o.epochs(), iters_per_epoch, o.step_size(), o.gamma(), 0.9,
                                            o.warmup_epochs(), 0.01});

  // Dropout draws; scratch and finetune differ only in the weights the caller built the model with.
  torch::manual_seed(o.seed());
  const bool extract = o.mode() == "feature_extractor";
  const auto heads = view.heads();
  TORCH_CHECK_VALUE(!extract || !heads.empty(), "feature_extractor mode knows the heads of ResNet, FCN and DeepLabV3 ",
                    "models, not of ", model->name());
  const auto head_params = parameters_of(heads);
  if (extract) {
    for (auto& p : model->parameters()) {
      if (!head_params.count(p.unsafeGetTensorImpl())) p.set_requires_grad(false);
    }
  }
  model->to(device);
  models::ChannelsLastParameters channels_last(*model);

  std::vector<std::string> names;
  std::vector<torch::Tensor> params, body, head;
  for (const auto& item : model->named_parameters()) {
    if (!item.value().requires_grad()) continue;
    names.push_back(item.key());
    params.push_back(item.value());
    (head_params.count(item.value().unsafeGetTensorImpl()) ? head : body).push_back(item.value());
  }
  auto optimizer = make_optimizer(
      o.optimizer(), o.param_groups().empty()
                         ? named_optimizer_groups(o.optimizer(), o.lr(), o.head_lr(), o.momentum(), o.nesterov(),
                                                  o.weight_decay(), body, head)
                         : given_optimizer_groups(o.param_groups(), *model, params));
  std::vector<double> base_lrs;
  for (const auto& group : optimizer->param_groups()) base_lrs.push_back(group.options().get_lr());
  GradScaler scaler(dtype == at::kHalf, device);

  RunState state;
  if (!o.resume().empty()) state = resume_from_checkpoint(o.resume(), *model, *optimizer, o, names, params);
  // Every rank starts from rank 0's weights, as DistributedDataParallel does.
  std::vector<torch::Tensor> model_state = model->parameters();
  for (const auto& b : model->buffers()) model_state.push_back(b);
  distributed.broadcast(model_state);
  const bool writes = !o.checkpoint_dir().empty() && distributed.is_main_process();
  if (writes) std::filesystem::create_directories(o.checkpoint_dir());

  // feature_extractor + deterministic data: the frozen features of each sample never change.
  const bool use_cache = extract && o.cache_features() && view.resnet != nullptr && train.loader() != nullptr;
  FeatureCache train_cache, val_cache;
  Training training{view,   o,        device, dtype,    extract, heads, *optimizer,
                    params, base_lrs, schedule, scaler, distributed};

  FitResult result;
  for (int64_t epoch = state.epochs_done; epoch < o.epochs(); ++epoch) {
    bool stopped = false;
    auto record = train_one_epoch(training, train, epoch, use_cache ? &train_cache : nullptr, state, progress, warning,
                                  stopped);
    // An interrupted epoch is not checkpointed: last.pt stays at the last complete one.
    if (!stopped && val) {
      record.val = evaluate_one_pass(view, *val, o, device, distributed, epoch, progress, warning, stopped,
                                     use_cache ? &val_cache : nullptr);
      record.has_val = true;
    }
    if (stopped) {
      result.interrupted = true;
      result.epochs.push_back(std::move(record));
      break;
    }
    if (val) {
      const double metric = view.segmentation ? record.val.mean_iou : record.val.acc1;
      // Only a finite metric of a finite model can be the best: a NaN neither wins nor blocks later epochs.
      const bool no_best = state.best_epoch < 0 || !std::isfinite(state.best_metric);
      if (std::isfinite(metric) && (no_best || metric > state.best_metric) && view.all_finite()) {
        state.best_metric = metric;
        state.best_epoch = epoch;
        if (writes) {
          const auto best = o.checkpoint_dir() + "/best.pt";
          if (metadata) io::save_model_file(io::state_dict(*model), *metadata, best);
          else io::save_weights(*model, best);
        }
      }
    }
    state.epochs_done = epoch + 1;
    if (writes) write_checkpoint(o.checkpoint_dir() + "/last.pt", *model, *optimizer, o, state, names, params);
    record.best_metric = state.best_metric;
    record.best_epoch = state.best_epoch;
    const bool keep_going = !distributed.any(epoch_end && !epoch_end(record));
    result.epochs.push_back(std::move(record));
    if (!keep_going) {
      result.interrupted = epoch + 1 < o.epochs();
      break;
    }
  }
  result.best_metric = state.best_metric;
  result.best_epoch = state.best_epoch;
  return result;
}

}  // namespace torchtl::engine
