#pragma once
// fit()'s last.pt: a torch.save dict that Python reads with torch.load ("model" is a state dict
// the torchvision twin loads) and that resume= continues from exactly: the weights, the
// optimizer's state by parameter name, the counters of the run and the global CPU generator.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "engine/options.h"

namespace torchtl::engine {

// Everything of a run that a checkpoint must bring back for an exact resume.
struct RunState {
  int64_t epochs_done = 0;
  int64_t iteration = 0;
  double best_metric = -1.0;
  int64_t best_epoch = -1;
};

// `names` and `params` are the optimizer's parameters, in order.
void write_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                      const FitOptions& options, const RunState& state, const std::vector<std::string>& names,
                      const std::vector<torch::Tensor>& params);

// Loads a last.pt written by write_checkpoint into the model, the optimizer (which must be of the
// kind options.optimizer() names) and the global CPU generator, and returns the run's state. Every
// way reading it can fail names the file.
RunState resume_from_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                                const FitOptions& options, const std::vector<std::string>& names,
                                const std::vector<torch::Tensor>& params);

// Removes what a killed run left half-written in `dir`: the temporary files that last.pt, best.pt,
// history.json and metrics.csv are written to before being renamed over their targets (so
// nothing complete is lost). Called when a run, fresh or resumed, starts writing into `dir`.
void remove_partial_writes(const std::string& dir);

}  // namespace torchtl::engine
