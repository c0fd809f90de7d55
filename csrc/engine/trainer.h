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
#include "engine/distributed.h"

namespace torchtl::engine {

struct FitOptions {
  TORCH_ARG(std::string, task) = "classification";  // or "segmentation"
  // "scratch" or "finetune" (all layers train, from the weights the model was built with) or
  // "feature_extractor" (only the head trains; the rest runs frozen, in eval mode, without grad).
  TORCH_ARG(std::string, mode) = "finetune";
  TORCH_ARG(std::string, optimizer) = "sgd";  // "sgd", "adam" or "adamw"
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
  TORCH_ARG(double, aux_weight) = 0.5;
  TORCH_ARG(int64_t, ignore_index) = 255;
  TORCH_ARG(std::string, device) = "";  // empty: CUDA when available, else CPU
  TORCH_ARG(std::string, amp) = "off";  // "off", "fp16", "bf16" (CUDA only)
  TORCH_ARG(bool, channels_last) = false;
  // feature_extractor with a deterministic train transform: keep the frozen features of epoch 1
  // and train the head on them afterwards.
  TORCH_ARG(bool, cache_features) = false;
  TORCH_ARG(std::string, checkpoint_dir) = "";  // best.pt (by validation metric) and last.pt
  TORCH_ARG(std::string, resume) = "";          // a last.pt to continue from
  TORCH_ARG(uint64_t, seed) = 0;
  // Data-parallel training over this c10d group (see engine/distributed.h); null: one process.
  TORCH_ARG(c10::intrusive_ptr<c10d::ProcessGroup>, process_group);
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
};

struct EpochRecord {
  int64_t epoch = 0;
  double lr = 0.0;
  double train_loss = 0.0, train_acc = -1.0;
  std::vector<double> step_losses;
  int64_t images = 0;
  double seconds = 0.0, images_per_second = 0.0;
  bool used_feature_cache = false;
  bool has_val = false;
  EvalResult val;
};

struct FitResult {
  std::vector<EpochRecord> epochs;
  bool interrupted = false;
  double best_metric = -1.0;  // acc1 or mean IoU on the validation data
  int64_t best_epoch = -1;
};

FitResult fit(const std::shared_ptr<torch::nn::Module>& model, const data::ThreadedLoader& train,
              const data::ThreadedLoader* val, const FitOptions& options, const ProgressFn& progress = nullptr);

EvalResult evaluate(const std::shared_ptr<torch::nn::Module>& model, const data::ThreadedLoader& loader,
                    const FitOptions& options, const ProgressFn& progress = nullptr);

torch::Device resolve_device(const std::string& device);

}  // namespace torchtl::engine
