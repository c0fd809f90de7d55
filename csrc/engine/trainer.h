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
#include "engine/param_groups.h"

namespace torchtl::engine {

struct FitOptions {
  TORCH_ARG(std::string, task) = "classification";  // or "segmentation"
  // "scratch" or "finetune" (all layers train, from the weights the model was built with) or
  // "feature_extractor" (only the head trains; the rest runs frozen, in eval mode, without grad).
  TORCH_ARG(std::string, mode) = "finetune";
  TORCH_ARG(std::string, optimizer) = "sgd";  // "sgd", "adam" or "adamw" ("rmsprop" with param_groups)
  // When not empty, the optimizer's groups as given (a torch.optim optimizer handed over from
  // Python); lr, head_lr, momentum, nesterov and weight_decay then do not apply.
  TORCH_ARG(std::vector<ParamGroup>, param_groups) = {};
  TORCH_ARG(double, lr) = 0.01;
  TORCH_ARG(double, head_lr) = -1.0;  // the head's parameter group; negative: lr
  TORCH_ARG(double, momentum) = 0.9;
  TORCH_ARG(bool, nesterov) = false;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(int64_t, epochs) = 1;
  TORCH_ARG(std::string, lr_schedule) = "constant";  // "constant", "step", "cosine", "poly"
  TORCH_ARG(int64_t, step_size) = 7;
  TORCH_ARG(double, gamma) = 0.1;
  TORCH_ARG(int64_t, warmup_epochs) = 0;
  TORCH_ARG(double, clip_grad_norm) = 0.0;  // 0: off
  TORCH_ARG(double, label_smoothing) = 0.0;
  TORCH_ARG(torch::Tensor, class_weights) = {};  // the loss's per-class weights; undefined: none
  // A non-finite loss skips its optimizer step and warns the first time; this many of them in a
  // run stop it with an error (0: the first one does).
  TORCH_ARG(int64_t, max_nonfinite_losses) = 10;
  TORCH_ARG(double, aux_weight) = 0.5;
  TORCH_ARG(int64_t, ignore_index) = 255;
  TORCH_ARG(std::string, device) = "";  // empty: CUDA when available, else CPU
  TORCH_ARG(std::string, amp) = "off";  // "off", "fp16", "bf16" (engine/amp.h)
  // The fast path of models/fast_path.h (channels_last, folded batch norm in evaluation); false
  // runs the loops in exact mode.
  TORCH_ARG(bool, channels_last) = true;
  // feature_extractor with a deterministic train transform: keep the frozen features of epoch 1
  // and train the head on them afterwards.
  TORCH_ARG(bool, cache_features) = false;
  TORCH_ARG(std::string, checkpoint_dir) = "";  // best.pt (by validation metric) and last.pt
  TORCH_ARG(std::string, resume) = "";          // a last.pt to continue from
  TORCH_ARG(uint64_t, seed) = 0;
  // Data-parallel training over this c10d group (see engine/distributed.h); null: one process.
  TORCH_ARG(c10::intrusive_ptr<c10d::ProcessGroup>, process_group);
  // torch.nn.SyncBatchNorm in training: each BatchNorm2d that trains normalises with the global
  // batch's statistics over process_group (models/sync_batch_norm.h). In one process it changes
  // nothing; a model with no BatchNorm2d that trains is an error.
  TORCH_ARG(bool, sync_bn) = false;
};

struct Progress {
  bool training = true;
  int64_t epoch = 0, epochs = 0, batch = 0, num_batches = 0, images = 0;
  double loss = 0.0, accuracy = 0.0;  // running means; accuracy is -1 when not measured
};
// Called between batches (throttled); returning false stops cleanly after the current batch.
using ProgressFn = std::function<bool(const Progress&)>;

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

enum class Warning { SkippedSamples, NonFiniteLoss };
// Where the loops' warnings go; without one they go to TORCH_WARN.
using WarningFn = std::function<void(Warning, const std::string&)>;

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

}  // namespace torchtl::engine
