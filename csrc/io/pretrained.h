#pragma once
// Starting a model from weights trained elsewhere, the same way from Python, the `torchtl`
// command and the C++ programs: DataParallel/DistributedDataParallel's "module." prefix dropped,
// the class count read from a head's weights, and a head of another class count re-initialised
// instead of loaded.
#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "io/weights.h"

namespace torchtl::io {

// The weights without the "module." that nn.DataParallel and DistributedDataParallel put before
// every key; unchanged unless every key has it.
StateDict strip_module_prefix(StateDict weights);

// The class count of a head: the rows of its last layer's weight `key` ("fc.weight",
// "classifier.4.weight"), or nothing when the weights lack it.
std::optional<int64_t> head_num_classes(const StateDict& weights, const std::string& key);

struct PretrainedResult {
  // Head tensors whose shape differs from the model's: they keep the model's own initialisation.
  std::vector<std::string> reinitialised;
  std::vector<std::string> missing_keys, unexpected_keys;  // as load_state_dict's
};

// Loads `weights` into `model` except the tensors under `head_prefixes` ("fc.", "classifier.")
// whose shape differs from the model's (another num_classes). Mismatches elsewhere throw as in
// load_state_dict.
PretrainedResult load_pretrained(torch::nn::Module& model, const StateDict& weights,
                                 const std::vector<std::string>& head_prefixes, bool strict = true);

}  // namespace torchtl::io
