#pragma once
// The options of fit() and evaluate(), defined once: the C++ struct, the Python binding's keyword
// arguments and their defaults all come from TORCHTL_FIT_OPTIONS.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "engine/choices.h"
#include "engine/distributed.h"
#include "engine/optimizer.h"

namespace torchtl::engine {

// Every option of fit() and evaluate(), once: type, name, default. FitOptions has a TORCH_ARG for
// each, and the Python binding a keyword argument with this default (a new option is one line here).
#define TORCHTL_FIT_OPTIONS(X)                                                                          \
  X(std::string, task, "classification") /* or "segmentation" */                                        \
  /* "scratch" or "finetune" (all layers train, from the weights the model was built with) or          \
     "feature_extractor" (only the head trains; the rest runs frozen, in eval mode, without grad). */  \
  X(std::string, mode, "finetune")                                                                      \
  X(std::string, optimizer, "sgd") /* "sgd", "adam" or "adamw" ("rmsprop" with param_groups) */         \
  /* When not empty, the optimizer's groups as given (a torch.optim optimizer handed over from         \
     Python); lr, head_lr, momentum, nesterov and weight_decay then do not apply. */                   \
  X(std::vector<torchtl::engine::ParamGroup>, param_groups, {})                                                        \
  X(double, lr, 0.01)                                                                                   \
  X(double, head_lr, -1.0) /* the head's parameter group; negative: lr */                               \
  X(double, momentum, 0.9)                                                                              \
  X(bool, nesterov, false)                                                                              \
  X(double, weight_decay, 0.0)                                                                          \
  X(int64_t, epochs, 1)                                                                                 \
  X(std::string, lr_schedule, "constant") /* "constant", "step", "cosine", "poly" */                    \
  X(int64_t, step_size, 7)                                                                              \
  X(double, gamma, 0.1)                                                                                 \
  X(int64_t, warmup_epochs, 0)                                                                          \
  X(double, clip_grad_norm, 0.0) /* 0: off */                                                           \
  X(double, label_smoothing, 0.0)                                                                       \
  X(torch::Tensor, class_weights, {}) /* the loss's per-class weights; undefined: none */               \
  /* A non-finite loss skips its optimizer step and warns the first time; this many of them in a       \
     run stop it with an error (0: the first one does). */                                             \
  X(int64_t, max_nonfinite_losses, 10)                                                                  \
  X(double, aux_weight, 0.5)                                                                            \
  X(int64_t, ignore_index, 255)                                                                         \
  X(std::string, device, "") /* empty: CUDA when available, else CPU */                                 \
  X(std::string, amp, "off") /* "off", "fp16", "bf16" (engine/amp.h) */                                 \
  /* The fast path of models/fast_path.h (channels_last, folded batch norm in evaluation); false       \
     runs the loops in exact mode. */                                                                   \
  X(bool, channels_last, true)                                                                          \
  /* feature_extractor with a deterministic train transform: keep the frozen features of epoch 1       \
     and train the head on them afterwards (engine/feature_cache.h). */                                 \
  X(bool, cache_features, false)                                                                        \
  /* torch.nn.SyncBatchNorm in training: each BatchNorm2d that trains normalises with the global       \
     batch's statistics over process_group (models/sync_batch_norm.h). In one process it changes       \
     nothing; a model with no BatchNorm2d that trains is an error. */                                   \
  X(bool, sync_bn, false)                                                                               \
  X(std::string, checkpoint_dir, "") /* best.pt (by validation metric) and last.pt */                   \
  X(std::string, resume, "") /* a last.pt to continue from */                                           \
  /* The JSON record of io/model_file.h that best.pt carries beside its weights; empty: a bare state  \
     dict. */                                                                                           \
  X(std::string, model_metadata, "")                                                                    \
  X(uint64_t, seed, 0)                                                                                  \
  /* Data-parallel training over this c10d group (see engine/distributed.h); null: one process. */    \
  X(c10::intrusive_ptr<c10d::ProcessGroup>, process_group, {})

struct FitOptions {
#define TORCHTL_FIT_OPTION_ARG(type, name, default_value) TORCH_ARG(type, name) = default_value;
  TORCHTL_FIT_OPTIONS(TORCHTL_FIT_OPTION_ARG)
#undef TORCHTL_FIT_OPTION_ARG
};

}  // namespace torchtl::engine
