#pragma once
// One training epoch, as torchvision's references' train_one_epoch: per batch the schedule's lr,
// forward under autocast, loss, backward, gradient all-reduce, unscale and clipping, optimizer
// step; then the epoch's totals over every rank.
#include <torch/torch.h>

#include <memory>
#include <optional>
#include <vector>

#include "engine/amp.h"
#include "engine/batch_source.h"
#include "engine/checkpoint.h"
#include "engine/distributed.h"
#include "engine/feature_cache.h"
#include "engine/model_parts.h"
#include "engine/schedule.h"
#include "engine/trainer.h"

namespace torchtl::engine {

// What every epoch of a run trains with; fit() sets it up once.
struct Training {
  ModelParts& model;
  const FitOptions& options;
  torch::Device device;
  std::optional<at::ScalarType> amp_dtype;
  bool feature_extractor;  // only `heads` train; the rest runs frozen, in eval mode
  const std::vector<std::shared_ptr<torch::nn::Module>>& heads;
  torch::optim::Optimizer& optimizer;
  const std::vector<torch::Tensor>& params;  // the optimizer's, in order
  const std::vector<double>& base_lrs;       // each param group's lr before the schedule
  const LRSchedule& schedule;
  GradScaler& scaler;
  const Distributed& distributed;
  int64_t nonfinite_losses = 0;  // over the whole run; max_nonfinite_losses of them stop it
};

// Trains `epoch` (0-based) on `train`, counting steps in state.iteration. With `cache`, the
// head trains on the frozen features it holds, or fills it. `stopped` is set when the progress
// callback asked to stop (on any rank); the record then covers the batches done.
EpochRecord train_one_epoch(Training& training, const BatchSource& train, int64_t epoch, FeatureCache* cache,
                            RunState& state, const ProgressFn& progress, const WarningFn& warning, bool& stopped);

}  // namespace torchtl::engine
