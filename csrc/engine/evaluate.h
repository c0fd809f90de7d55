#pragma once
// One evaluation pass, as torchvision's references' evaluate: loss, top-1/top-5 accuracy or the
// confusion-matrix metrics, summed over every rank. The public evaluate() is in trainer.h.
#include <torch/torch.h>

#include "engine/batch_source.h"
#include "engine/distributed.h"
#include "engine/feature_cache.h"
#include "engine/model_parts.h"
#include "engine/trainer.h"

namespace torchtl::engine {

// Evaluates on `source` (this rank's share) after training epoch `epoch` (0-based; 0 outside
// fit). With `cache` (a ResNet in feature_extractor mode, deterministic data), the frozen
// features come from it when it holds the whole data set, and fill it otherwise. `stopped` is set
// when the progress callback asked to stop on any rank.
EvalResult evaluate_one_pass(ModelParts& model, const BatchSource& source, const FitOptions& options,
                             torch::Device device, const Distributed& distributed, int64_t epoch,
                             const ProgressFn& progress, const WarningFn& warning, bool& stopped,
                             FeatureCache* cache = nullptr);

}  // namespace torchtl::engine
