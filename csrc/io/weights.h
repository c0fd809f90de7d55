#pragma once
// Weights in and out of any torch::nn::Module, in the formats Python writes and reads: traced or
// scripted archives (torch.jit.save, the way LibTorch programs load models) and torch.save'd state dicts. Every
// mismatch is reported at once, by key, instead of failing on the first one.
#include <torch/nn/module.h>

#include <string>
#include <utility>
#include <vector>

namespace torchtl::io {

// Ordered, as Python's state_dict() is.
using StateDict = std::vector<std::pair<std::string, torch::Tensor>>;

struct LoadResult {
  std::vector<std::string> missing_keys;     // in the module, not in the weights
  std::vector<std::string> unexpected_keys;  // in the weights, not in the module
};

// Parameters and buffers in torch.nn's state_dict() order (each module's own parameters, then
// its buffers, then its children), so the order equals torchvision's.
StateDict state_dict(const torch::nn::Module& module);

// Copies `weights` into the module's tensors in place (dtype and device converted). Wrongly
// shaped keys always throw; missing or unexpected keys throw when `strict`. The one error
// lists every missing, unexpected and wrongly shaped key.
LoadResult load_state_dict(torch::nn::Module& module, const StateDict& weights, bool strict = true);

// Reads a traced/scripted archive or a torch.save'd state dict (a dict of tensors, or a
// checkpoint dict holding one under "model" or "state_dict"), Python's or save_state_dict()'s.
// DataParallel's "module." prefix is dropped (io/pretrained.h).
StateDict read_weights(const std::string& path);

// read_weights + load_state_dict.
LoadResult load_weights(torch::nn::Module& module, const std::string& path, bool strict = true);

// Writes `value` (dicts, lists, strings, numbers, tensors) in torch.save's format, atomically:
// Python reads it with torch.load(path) (weights_only). Checkpoints are written with this.
// `extra_records` (name, bytes) are written into the same archive, where torch.load ignores them
// (a model file's metadata, io/model_file.h).
void save_pickle(const c10::IValue& value, const std::string& path,
                 const std::vector<std::pair<std::string, std::string>>& extra_records = {});
c10::IValue load_pickle(const std::string& path);
// A state dict as a dict IValue (tensors detached, on the CPU), for save_pickle.
c10::IValue to_ivalue(const StateDict& weights);

// Writes a state dict that Python opens with torch.load(path) and load_state_dict().
void save_state_dict(const StateDict& weights, const std::string& path);
void save_weights(const torch::nn::Module& module, const std::string& path);

}  // namespace torchtl::io
