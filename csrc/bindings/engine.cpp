// The training engine's Python face: fit/evaluate run with the GIL released and call back into
// Python (with the GIL) only for progress, where a pending Ctrl-C stops the run between batches.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <optional>

#include "bindings/bindings.h"
#include "data/loader.h"
#include "engine/metrics.h"
#include "engine/trainer.h"

namespace py = pybind11;

namespace torchtl::bindings {
namespace {

using engine::FitOptions;

FitOptions fit_options(const py::dict& d) {
  FitOptions o;
  for (const auto& [key_obj, value] : d) {
    const auto key = key_obj.cast<std::string>();
    if (key == "task") o.task(value.cast<std::string>());
    else if (key == "mode") o.mode(value.cast<std::string>());
    else if (key == "optimizer") o.optimizer(value.cast<std::string>());
    else if (key == "lr") o.lr(value.cast<double>());
    else if (key == "head_lr") o.head_lr(value.cast<double>());
    else if (key == "momentum") o.momentum(value.cast<double>());
    else if (key == "nesterov") o.nesterov(value.cast<bool>());
    else if (key == "weight_decay") o.weight_decay(value.cast<double>());
    else if (key == "epochs") o.epochs(value.cast<int64_t>());
    else if (key == "lr_schedule") o.lr_schedule(value.cast<std::string>());
    else if (key == "step_size") o.step_size(value.cast<int64_t>());
    else if (key == "gamma") o.gamma(value.cast<double>());
    else if (key == "warmup_epochs") o.warmup_epochs(value.cast<int64_t>());
    else if (key == "clip_grad_norm") o.clip_grad_norm(value.cast<double>());
    else if (key == "label_smoothing") o.label_smoothing(value.cast<double>());
    else if (key == "aux_weight") o.aux_weight(value.cast<double>());
    else if (key == "ignore_index") o.ignore_index(value.cast<int64_t>());
    else if (key == "device") o.device(value.cast<std::string>());
    else if (key == "amp") o.amp(value.cast<std::string>());
    else if (key == "channels_last") o.channels_last(value.cast<bool>());
    else if (key == "cache_features") o.cache_features(value.cast<bool>());
    else if (key == "checkpoint_dir") o.checkpoint_dir(value.cast<std::string>());
    else if (key == "resume") o.resume(value.cast<std::string>());
    else if (key == "seed") o.seed(value.cast<uint64_t>());
    // torch.distributed's own ProcessGroup object (torch._C._distributed_c10d), shared with C++.
    else if (key == "process_group") {
      if (!value.is_none()) o.process_group(value.cast<c10::intrusive_ptr<c10d::ProcessGroup>>());
    }
    else throw py::value_error("unknown fit option '" + key + "'");
  }
  return o;
}

py::dict eval_dict(const engine::EvalResult& r, bool segmentation) {
  py::dict d;
  d["loss"] = r.loss;
  if (segmentation) {
    d["pixel_acc"] = r.pixel_accuracy;
    d["miou"] = r.mean_iou;
    d["iou"] = r.iou;
  } else {
    d["acc1"] = r.acc1;
    d["acc5"] = r.acc5;
  }
  d["confusion"] = r.confusion;
  d["images"] = r.images;
  d["seconds"] = r.seconds;
  return d;
}

// Wraps the Python callback. A Ctrl-C (seen by PyErr_CheckSignals, or raised inside the callback)
// stops the run between batches and is recorded in `interrupted`; any other exception from the
// callback stops it too and is kept in `error`, to be raised once the GIL is back.
struct CallbackState {
  bool interrupted = false;
  std::optional<py::error_already_set> error;
};

engine::ProgressFn progress_fn(py::object callback, CallbackState& state) {
  return [callback, &state](const engine::Progress& p) {
    py::gil_scoped_acquire gil;
    try {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (callback.is_none()) return true;
      py::dict d;
      d["training"] = p.training;
      d["epoch"] = p.epoch;
      d["epochs"] = p.epochs;
      d["batch"] = p.batch;
      d["num_batches"] = p.num_batches;
      d["images"] = p.images;
      d["loss"] = p.loss;
      d["accuracy"] = p.accuracy;
      py::object keep_going = callback(d);
      return keep_going.is_none() || keep_going.cast<bool>();
    } catch (py::error_already_set& e) {
      if (e.matches(PyExc_KeyboardInterrupt)) {
        state.interrupted = true;
      } else {
        state.error = std::move(e);
      }
      return false;
    }
  };
}

}  // namespace

void init_engine(py::module_& m) {
  auto e = m.def_submodule("engine", "torchtl::engine: train and evaluate loops, metrics");

  e.def(
      "fit",
      [](const std::shared_ptr<torch::nn::Module>& model, const data::ThreadedLoader& train,
         const data::ThreadedLoader* val, const py::dict& options, py::object progress) {
        const auto o = fit_options(options);
        CallbackState state;
        auto fn = progress_fn(std::move(progress), state);
        engine::FitResult result;
        {
          py::gil_scoped_release no_gil;
          result = engine::fit(model, train, val, o, fn);
        }
        if (state.error) throw std::move(*state.error);
        const bool segmentation = o.task() == "segmentation";
        py::list epochs;
        for (const auto& r : result.epochs) {
          py::dict d;
          d["epoch"] = r.epoch;
          d["lr"] = r.lr;
          d["train_loss"] = r.train_loss;
          if (!segmentation) d["train_acc"] = r.train_acc;
          d["step_losses"] = r.step_losses;
          d["images"] = r.images;
          d["seconds"] = r.seconds;
          d["images_per_second"] = r.images_per_second;
          d["feature_cache"] = r.used_feature_cache;
          if (r.has_val) d["val"] = eval_dict(r.val, segmentation);
          epochs.append(d);
        }
        py::dict out;
        out["epochs"] = epochs;
        out["interrupted"] = result.interrupted;
        out["keyboard_interrupt"] = state.interrupted;
        out["best_metric"] = result.best_metric;
        out["best_epoch"] = result.best_epoch;
        return out;
      },
      py::arg("model"), py::arg("train"), py::arg("val"), py::arg("options"), py::arg("progress"));

  e.def(
      "evaluate",
      [](const std::shared_ptr<torch::nn::Module>& model, const data::ThreadedLoader& loader, const py::dict& options,
         py::object progress) {
        const auto o = fit_options(options);
        CallbackState state;
        auto fn = progress_fn(std::move(progress), state);
        engine::EvalResult result;
        {
          py::gil_scoped_release no_gil;
          result = engine::evaluate(model, loader, o, fn);
        }
        if (state.error) throw std::move(*state.error);
        if (state.interrupted) {
          PyErr_SetNone(PyExc_KeyboardInterrupt);
          throw py::error_already_set();
        }
        return eval_dict(result, o.task() == "segmentation");
      },
      py::arg("model"), py::arg("loader"), py::arg("options"), py::arg("progress"));

  e.def(
      "confusion_metrics",
      [](const torch::Tensor& target, const torch::Tensor& prediction, int64_t num_classes) {
        engine::ConfusionMatrix cm(num_classes);
        cm.update(target, prediction);
        auto r = cm.compute();
        py::dict d;
        d["pixel_acc"] = r.pixel_accuracy;
        d["class_acc"] = r.class_accuracy;
        d["iou"] = r.iou;
        d["miou"] = r.mean_iou;
        d["confusion"] = cm.matrix();
        return d;
      },
      py::arg("target"), py::arg("prediction"), py::arg("num_classes"));
}

}  // namespace torchtl::bindings
