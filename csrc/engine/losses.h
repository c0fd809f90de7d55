#pragma once
// The references' criteria: cross entropy for classification (label smoothing, class weights), and
// for segmentation on "out" plus aux_weight x "aux", ignoring ignore_index. Targets the model has
// no class for raise an error naming the sample.
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "engine/options.h"

namespace torchtl::engine {

// Names row `row` of a batch in an error.
using RowNamer = std::function<std::string(int64_t row)>;

// The dataset's own description of the sample (its map file line and files) when the batch came
// from torchtl's loader (`loader` and the batch's dataset `indices`), else its place in the batch.
RowNamer row_namer(const data::ThreadedLoader* loader, const std::vector<int64_t>* indices);

torch::Tensor classification_loss(const torch::Tensor& logits, const torch::Tensor& target, const FitOptions& options,
                                  const RowNamer& name_row);
torch::Tensor segmentation_loss(const torch::OrderedDict<std::string, torch::Tensor>& out, const torch::Tensor& target,
                                const FitOptions& options, const RowNamer& name_row);

}  // namespace torchtl::engine
