#pragma once
// LibTorch train/evaluate loops for torchtl's models: one epoch of training or one evaluation
// pass entirely in C++ (device moves, forward, loss, backward, optimizer and schedule steps,
// metrics), fed by data::ThreadedLoader. Python drives them with the GIL released.
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "engine/batch_source.h"
#include "engine/distributed.h"
#include "engine/options.h"
#include "engine/progress.h"

namespace torchtl::engine {

struct EvalResult {
  double loss = 0.0;
  double acc1 = 0.0, acc5 = 0.0;                    // classification
  double pixel_accuracy = 0.0, mean_iou = 0.0;      // segmentation
  std::vector<double> iou;
  torch::Tensor confusion;                          // int64, rows: target
  int64_t images = 0;
  double seconds = 0.0;
  std::vector<std::string> skipped;  // one message per sample dropped by on_error="skip"
};

struct EpochRecord {
  int64_t epoch = 0;
  double lr = 0.0;
  double train_loss = 0.0, train_acc = -1.0;
  std::vector<double> step_losses;
  int64_t nonfinite_losses = 0;  // steps skipped for a NaN or infinite loss
  std::vector<std::string> skipped;  // one message per training sample dropped by on_error="skip"
  int64_t images = 0;
  double seconds = 0.0, images_per_second = 0.0;
  bool used_feature_cache = false;
  bool has_val = false;
  EvalResult val;
  // The run's best validation metric (finite) and its epoch after this epoch; -1: none yet.
  double best_metric = -1.0;
  int64_t best_epoch = -1;
};

// Called after each complete epoch, once its checkpoints are written; false stops the run.
using EpochEndFn = std::function<bool(const EpochRecord&)>;

struct FitResult {
  std::vector<EpochRecord> epochs;
  bool interrupted = false;
  double best_metric = -1.0;  // acc1 or mean IoU on the validation data
  int64_t best_epoch = -1;
};

FitResult fit(const std::shared_ptr<torch::nn::Module>& model, const BatchSource& train, const BatchSource* val,
              const FitOptions& options, const ProgressFn& progress = nullptr, const EpochEndFn& epoch_end = nullptr,
              const WarningFn& warning = nullptr);
FitResult fit(const std::shared_ptr<torch::nn::Module>& model, const data::ThreadedLoader& train,
              const data::ThreadedLoader* val, const FitOptions& options, const ProgressFn& progress = nullptr,
              const EpochEndFn& epoch_end = nullptr, const WarningFn& warning = nullptr);

EvalResult evaluate(const std::shared_ptr<torch::nn::Module>& model, const BatchSource& loader,
                    const FitOptions& options, const ProgressFn& progress = nullptr, const WarningFn& warning = nullptr);
EvalResult evaluate(const std::shared_ptr<torch::nn::Module>& model, const data::ThreadedLoader& loader,
                    const FitOptions& options, const ProgressFn& progress = nullptr, const WarningFn& warning = nullptr);

torch::Device resolve_device(const std::string& device);

// The hyperparameters (lr, head_lr, momentum, weight_decay, gamma, step_size, warmup_epochs,
// clip_grad_norm, label_smoothing, aux_weight and every given param group's), each a finite number
// in its range, in torchtl's words naming the option; fit() checks them before anything runs or is
// written (LibTorch's optimizers would say "Invalid learning rate: nan" once the run had begun).
void check_hyperparameters(const FitOptions& o);

}  // namespace torchtl::engine
