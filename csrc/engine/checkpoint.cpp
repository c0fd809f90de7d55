#include "engine/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>

#include "engine/optimizer.h"
#include "io/weights.h"

namespace torchtl::engine {

namespace {

c10::impl::GenericDict config_of(const FitOptions& o) {
  c10::impl::GenericDict c(c10::StringType::get(), c10::AnyType::get());
  c.insert("task", o.task());
  c.insert("mode", o.mode());
  c.insert("optimizer", o.optimizer());
  c.insert("lr", o.lr());
  c.insert("epochs", o.epochs());
  c.insert("lr_schedule", o.lr_schedule());
  c.insert("seed", static_cast<int64_t>(o.seed()));
  return c;
}

c10::impl::GenericDict read_checkpoint(const std::string& path) {
  c10::IValue value;
  try {
    value = io::load_pickle(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, "resume: cannot read '", path, "' (a truncated or corrupt file, or not one torch.save ",
                      "wrote): ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    TORCH_CHECK_VALUE(false, "resume: cannot read '", path, "' (a truncated or corrupt file, or not one torch.save ",
                      "wrote): ", e.what());
  }
  const char* needed[] = {"model", "optimizer", "epoch", "iteration", "best_metric", "best_epoch", "rng_state"};
  const bool is_dict = value.isGenericDict();
  for (const char* key : needed) {
    TORCH_CHECK_VALUE(is_dict && value.toGenericDict().contains(key), "resume: '", path,
                      "' is not a checkpoint written by fit (it has no '", key, "' entry): resume needs the last.pt ",
                      "of a checkpoint_dir; best.pt and other state dicts hold weights only (load those into the ",
                      "model instead)");
  }
  return value.toGenericDict();
}

}  // namespace

void write_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                      const FitOptions& o, const RunState& state, const std::vector<std::string>& names,
                      const std::vector<torch::Tensor>& params) {
  c10::impl::GenericDict ckpt(c10::StringType::get(), c10::AnyType::get());
  ckpt.insert("model", io::to_ivalue(io::state_dict(model)));
  c10::impl::GenericDict opt(c10::StringType::get(), c10::AnyType::get());
  opt.insert("kind", o.optimizer());
  opt.insert("state", optimizer_state(optimizer, names, params));
  ckpt.insert("optimizer", opt);
  ckpt.insert("epoch", state.epochs_done);
  ckpt.insert("iteration", state.iteration);
  ckpt.insert("best_metric", state.best_metric);
  ckpt.insert("best_epoch", state.best_epoch);
  ckpt.insert("rng_state", at::detail::getDefaultCPUGenerator().get_state());
  ckpt.insert("config", config_of(o));
  io::save_pickle(ckpt, path);
}

RunState resume_from_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                                const FitOptions& o, const std::vector<std::string>& names,
                                const std::vector<torch::Tensor>& params) {
  auto ckpt = read_checkpoint(path);
  io::StateDict weights;
  for (const auto& e : ckpt.at("model").toGenericDict()) weights.emplace_back(e.key().toStringRef(), e.value().toTensor());
  io::load_state_dict(model, weights, true);
  auto opt = ckpt.at("optimizer").toGenericDict();
  TORCH_CHECK_VALUE(opt.at("kind").toStringRef() == o.optimizer(), "resume: the checkpoint used optimizer '",
                    opt.at("kind").toStringRef(), "', this run asks for '", o.optimizer(), "'");
  restore_optimizer_state(optimizer, o.optimizer(), opt.at("state").toGenericDict(), names, params);
  RunState state;
  state.epochs_done = ckpt.at("epoch").toInt();
  state.iteration = ckpt.at("iteration").toInt();
  state.best_metric = ckpt.at("best_metric").toDouble();
  state.best_epoch = ckpt.at("best_epoch").toInt();
  auto generator = at::detail::getDefaultCPUGenerator();  // a handle on the global generator
  generator.set_state(ckpt.at("rng_state").toTensor());
  return state;
}

void remove_partial_writes(const std::string& dir) {
  for (const char* name : {"last.pt", "best.pt", "history.json", "metrics.csv"}) {
    std::error_code ignored;  // absent is the usual case
    std::filesystem::remove(std::filesystem::path(dir) / (std::string(name) + ".tmp"), ignored);
  }
}

}  // namespace torchtl::engine
