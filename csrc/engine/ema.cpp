#include "engine/ema.h"

#include <algorithm>

namespace torchtl::engine {
namespace {

// AveragedModel's order: parameters(), then buffers().
std::vector<std::pair<std::string, torch::Tensor>> ema_named_state(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model.named_parameters()) out.emplace_back(item.key(), item.value());
  for (const auto& item : model.named_buffers()) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace

double adjusted_ema_decay(double model_ema_decay, int64_t batch_size, int64_t world_size, int64_t model_ema_steps,
                          int64_t epochs) {
  TORCH_CHECK_VALUE(model_ema_decay >= 0.0 && model_ema_decay <= 1.0, "model_ema_decay must be in [0, 1], got ",
                    model_ema_decay);
  TORCH_CHECK_VALUE(batch_size > 0 && world_size > 0 && model_ema_steps > 0 && epochs > 0,
                    "the EMA decay adjustment needs positive batch_size, world_size, model_ema_steps and epochs");
  // In the references' order: adjust = world_size * batch_size * model_ema_steps / epochs.
  const double adjust = static_cast<double>(world_size * batch_size * model_ema_steps) / static_cast<double>(epochs);
  const double alpha = std::min(1.0, (1.0 - model_ema_decay) * adjust);
  return 1.0 - alpha;
}

ExponentialMovingAverage::ExponentialMovingAverage(const torch::nn::Module& model, double decay, torch::Device device)
    : decay_(decay), n_averaged_(torch::zeros({}, torch::TensorOptions().dtype(torch::kLong).device(device))) {
  TORCH_CHECK_VALUE(decay >= 0.0 && decay <= 1.0, "ExponentialMovingAverage: decay must be in [0, 1], got ", decay);
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : ema_named_state(model)) {
    names_.push_back(name);
    tensors_.push_back(tensor.detach().clone().to(device));
  }
}

void ExponentialMovingAverage::update_parameters(const torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  const auto current = ema_named_state(model);
  TORCH_CHECK_VALUE(current.size() == tensors_.size(), "ExponentialMovingAverage.update_parameters: the model has ",
                    current.size(), " parameters and buffers, the average ", tensors_.size());
  const bool copy = n_averaged() == 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    TORCH_CHECK_VALUE(current[i].first == names_[i], "ExponentialMovingAverage.update_parameters: tensor ", i, " is '",
                      current[i].first, "', the average has '", names_[i], "'");
    auto& averaged = tensors_[i];
    const auto model_tensor = current[i].second.detach().to(averaged.device());
    if (copy) {
      averaged.copy_(model_tensor);
    } else {
      // ema_avg(avg, p, n) = decay * avg + (1 - decay) * p, on every tensor (integer buffers
      // included, which the copy back truncates as torch's does).
      averaged.copy_(averaged.mul(decay_).add(model_tensor.mul(1.0 - decay_)));
    }
  }
  n_averaged_.add_(1);
}

void ExponentialMovingAverage::copy_to(torch::nn::Module& model) const {
  torch::NoGradGuard no_grad;
  const auto target = ema_named_state(model);
  TORCH_CHECK_VALUE(target.size() == tensors_.size(), "ExponentialMovingAverage.copy_to: the model has ", target.size(),
                    " parameters and buffers, the average ", tensors_.size());
  for (size_t i = 0; i < target.size(); ++i) {
    TORCH_CHECK_VALUE(target[i].first == names_[i], "ExponentialMovingAverage.copy_to: tensor ", i, " is '",
                      target[i].first, "', the average has '", names_[i], "'");
    target[i].second.copy_(tensors_[i]);
  }
}

c10::impl::GenericDict ExponentialMovingAverage::state_dict() const {
  c10::impl::GenericDict out(c10::StringType::get(), c10::TensorType::get());
  out.insert("n_averaged", n_averaged_.clone());
  for (size_t i = 0; i < names_.size(); ++i) out.insert("module." + names_[i], tensors_[i].clone());
  return out;
}

void ExponentialMovingAverage::load_state_dict(const c10::impl::GenericDict& state) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK_VALUE(state.contains("n_averaged"), "EMA state: no 'n_averaged' entry");
  std::vector<std::string> missing;
  for (size_t i = 0; i < names_.size(); ++i) {
    if (!state.contains("module." + names_[i])) missing.push_back("module." + names_[i]);
  }
  TORCH_CHECK_VALUE(missing.empty(), "EMA state: ", missing.size(), " missing entries, first '",
                    missing.empty() ? "" : missing.front(), "'");
  TORCH_CHECK_VALUE(state.size() == names_.size() + 1, "EMA state: ", state.size() - 1 - names_.size(),
                    " unexpected entries");
  for (size_t i = 0; i < names_.size(); ++i) {
    const auto saved = state.at("module." + names_[i]).toTensor();
    TORCH_CHECK_VALUE(saved.sizes() == tensors_[i].sizes(), "EMA state: 'module.", names_[i], "' has shape ",
                      saved.sizes(), ", the model ", tensors_[i].sizes());
    tensors_[i].copy_(saved);
  }
  n_averaged_.copy_(state.at("n_averaged").toTensor());
}

}  // namespace torchtl::engine
