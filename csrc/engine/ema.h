#pragma once
// torchvision references/classification's ExponentialMovingAverage: a
// torch.optim.swa_utils.AveragedModel(model, avg_fn=ema_avg, use_buffers=True), so parameters AND
// buffers (running statistics, num_batches_tracked) are averaged, in the order
// model.parameters() then model.buffers(), with avg = decay * avg + (1 - decay) * model.
#include <torch/torch.h>

#include <string>
#include <vector>

namespace torchtl::engine {

// The references' adjusted decay: alpha = 1 - model_ema_decay;
// alpha = min(1, alpha * world_size * batch_size * model_ema_steps / epochs); decay = 1 - alpha.
double adjusted_ema_decay(double model_ema_decay, int64_t batch_size, int64_t world_size, int64_t model_ema_steps,
                          int64_t epochs);

class ExponentialMovingAverage {
 public:
  // Copies model's parameters and buffers onto `device` (AveragedModel's deepcopy + .to(device)).
  ExponentialMovingAverage(const torch::nn::Module& model, double decay, torch::Device device);

  // AveragedModel.update_parameters: the first update (n_averaged == 0) copies the model; later
  // ones average. n_averaged counts updates.
  void update_parameters(const torch::nn::Module& model);
  // The references' warm-up rule: `if epoch < lr_warmup_epochs: model_ema.n_averaged.fill_(0)`,
  // so the next update copies again.
  void reset_n_averaged() { n_averaged_.fill_(0); }
  int64_t n_averaged() const { return n_averaged_.item<int64_t>(); }
  double decay() const { return decay_; }

  // The averaged tensors by the model's names (parameters, then buffers): the model's state_dict
  // keys, so best_ema.pt loads into the torchvision twin as the model's own weights do.
  const std::vector<std::string>& names() const { return names_; }
  const std::vector<torch::Tensor>& tensors() const { return tensors_; }
  // Writes the averages into `model` (same architecture), e.g. to evaluate the EMA model.
  void copy_to(torch::nn::Module& model) const;
  // The references' checkpoint["model_ema"]: AveragedModel.state_dict(), "n_averaged" and
  // "module.<name>" for each averaged tensor.
  c10::impl::GenericDict state_dict() const;
  void load_state_dict(const c10::impl::GenericDict& state);

 private:
  double decay_;
  std::vector<std::string> names_;
  std::vector<torch::Tensor> tensors_;
  torch::Tensor n_averaged_;
};

}  // namespace torchtl::engine
