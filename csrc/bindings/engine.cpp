// The training engine's Python face: fit/evaluate run with the GIL released and call back into
// Python (with the GIL) only for progress, where a pending Ctrl-C stops the run between batches.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <optional>

#include "bindings/bindings.h"
#include "bindings/python_bridge.h"
#include "data/loader.h"
#include "engine/metrics.h"
#include "engine/trainer.h"

namespace py = pybind11;

namespace torchtl::bindings {
namespace {

using engine::FitOptions;

engine::ParamGroup param_group(const py::dict& d) {
  engine::ParamGroup g;
  for (const auto& [key_obj, value] : d) {
    const auto key = key_obj.cast<std::string>();
    if (key == "params") g.params = value.cast<std::vector<torch::Tensor>>();
    else if (key == "lr") g.lr = value.cast<double>();
    else if (key == "weight_decay") g.weight_decay = value.cast<double>();
    else if (key == "momentum") g.momentum = value.cast<double>();
    else if (key == "dampening") g.dampening = value.cast<double>();
    else if (key == "nesterov") g.nesterov = value.cast<bool>();
    else if (key == "beta1") g.beta1 = value.cast<double>();
    else if (key == "beta2") g.beta2 = value.cast<double>();
    else if (key == "eps") g.eps = value.cast<double>();
    else if (key == "amsgrad") g.amsgrad = value.cast<bool>();
    else if (key == "alpha") g.alpha = value.cast<double>();
    else if (key == "centered") g.centered = value.cast<bool>();
    else throw py::value_error("unknown param group option '" + key + "'");
  }
  return g;
}

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
    else if (key == "class_weights") o.class_weights(value.is_none() ? torch::Tensor() : value.cast<torch::Tensor>());
    else if (key == "max_nonfinite_losses") o.max_nonfinite_losses(value.cast<int64_t>());
    else if (key == "param_groups") {
      std::vector<engine::ParamGroup> groups;
      for (const auto& g : value.cast<py::list>()) groups.push_back(param_group(g.cast<py::dict>()));
      o.param_groups(std::move(groups));
    }
    else if (key == "aux_weight") o.aux_weight(value.cast<double>());
    else if (key == "ignore_index") o.ignore_index(value.cast<int64_t>());
    else if (key == "device") o.device(value.cast<std::string>());
    else if (key == "amp") o.amp(value.cast<std::string>());
    else if (key == "channels_last") o.channels_last(value.cast<bool>());
    else if (key == "cache_features") o.cache_features(value.cast<bool>());
    else if (key == "sync_bn") o.sync_bn(value.cast<bool>());
    else if (key == "checkpoint_dir") o.checkpoint_dir(value.cast<std::string>());
    else if (key == "resume") o.resume(value.cast<std::string>());
    else if (key == "seed") {
      const auto seed = value.cast<int64_t>();
      if (seed < 0) throw py::value_error("seed must be >= 0, got " + std::to_string(seed));
      o.seed(static_cast<uint64_t>(seed));
    }
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
  d["skipped"] = r.skipped.size();
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

  // Records what a Python callback raised; true when the run must stop.
  void caught(py::error_already_set& e) {
    if (e.matches(PyExc_KeyboardInterrupt)) {
      interrupted = true;
    } else if (!error) {
      error = std::move(e);
    }
  }
  bool stopping() const { return interrupted || error.has_value(); }
};

// Epoch numbers count from 1 in Python, as on the screen and in history.json.
py::dict epoch_dict(const engine::EpochRecord& r, bool segmentation) {
  py::dict d;
  d["epoch"] = r.epoch + 1;
  d["lr"] = r.lr;
  d["train_loss"] = r.train_loss;
  if (!segmentation) d["train_acc"] = r.train_acc;
  d["step_losses"] = r.step_losses;
  d["nonfinite_losses"] = r.nonfinite_losses;
  d["skipped"] = r.skipped.size();
  d["images"] = r.images;
  d["seconds"] = r.seconds;
  d["images_per_second"] = r.images_per_second;
  d["feature_cache"] = r.used_feature_cache;
  if (r.has_val) d["val"] = eval_dict(r.val, segmentation);
  d["best_metric"] = r.best_metric;
  d["best_epoch"] = r.best_epoch + 1;
  return d;
}

// Python's warnings, in the categories the data loader uses; a warning turned into an error by
// a warnings filter stops the run at the next batch and is raised.
engine::WarningFn warning_fn(CallbackState& state) {
  return [&state](engine::Warning kind, const std::string& message) {
    py::gil_scoped_acquire gil;
    try {
      py::object category = kind == engine::Warning::SkippedSamples
                                ? py::module_::import("torchtl.data").attr("SkippedSamplesWarning")
                                : py::reinterpret_borrow<py::object>(PyExc_RuntimeWarning);
      if (PyErr_WarnEx(category.ptr(), message.c_str(), 1) != 0) throw py::error_already_set();
    } catch (py::error_already_set& e) {
      state.caught(e);
    }
  };
}

engine::EpochEndFn epoch_end_fn(py::object callback, bool segmentation, CallbackState& state) {
  return [callback, segmentation, &state](const engine::EpochRecord& r) {
    py::gil_scoped_acquire gil;
    try {
      if (!callback.is_none()) callback(epoch_dict(r, segmentation));
      return !state.stopping();
    } catch (py::error_already_set& e) {
      state.caught(e);
      return false;
    }
  };
}

// torchtl's threaded loader, or (iterator factory, number of batches, name) for a Python iterable.
std::unique_ptr<engine::BatchSource> batch_source(const py::object& source) {
  if (py::isinstance<data::ThreadedLoader>(source)) {
    return std::make_unique<engine::LoaderSource>(source.cast<const data::ThreadedLoader&>());
  }
  auto t = source.cast<py::tuple>();
  return std::make_unique<PythonBatches>(t[0], t[1].cast<int64_t>(), t[2].cast<std::string>());
}

engine::ProgressFn progress_fn(py::object callback, CallbackState& state) {
  return [callback, &state](const engine::Progress& p) {
    py::gil_scoped_acquire gil;
    try {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (state.stopping()) return false;
      if (callback.is_none()) return true;
      py::dict d;
      d["training"] = p.training;
      d["epoch"] = p.epoch + 1;
      d["epochs"] = p.epochs;
      d["batch"] = p.batch;
      d["num_batches"] = p.num_batches;
      d["images"] = p.images;
      d["loss"] = p.loss;
      d["accuracy"] = p.accuracy;
      py::object keep_going = callback(d);
      return keep_going.is_none() || keep_going.cast<bool>();
    } catch (py::error_already_set& e) {
      state.caught(e);
      return false;
    }
  };
}

}  // namespace

void init_engine(py::module_& m) {
  auto e = m.def_submodule("engine", "torchtl::engine: train and evaluate loops, metrics");

  e.def(
      "fit",
      [](const std::shared_ptr<torch::nn::Module>& model, const py::object& train, const py::object& val,
         const py::dict& options, py::object progress, py::object epoch_end) {
        const auto o = fit_options(options);
        const bool segmentation = o.task() == "segmentation";
        CallbackState state;
        auto fn = progress_fn(std::move(progress), state);
        auto on_epoch = epoch_end_fn(std::move(epoch_end), segmentation, state);
        auto warn = warning_fn(state);
        auto train_source = batch_source(train);
        auto val_source = val.is_none() ? nullptr : batch_source(val);
        engine::FitResult result;
        {
          py::gil_scoped_release no_gil;
          result = engine::fit(model, *train_source, val_source.get(), o, fn, on_epoch, warn);
        }
        if (state.error) throw std::move(*state.error);
        py::list epochs;
        for (const auto& r : result.epochs) epochs.append(epoch_dict(r, segmentation));
        py::dict out;
        out["epochs"] = epochs;
        out["interrupted"] = result.interrupted;
        out["keyboard_interrupt"] = state.interrupted;
        out["best_metric"] = result.best_metric;
        out["best_epoch"] = result.best_epoch + 1;
        return out;
      },
      py::arg("model"), py::arg("train"), py::arg("val"), py::arg("options"), py::arg("progress"),
      py::arg("epoch_end"));

  e.def(
      "evaluate",
      [](const std::shared_ptr<torch::nn::Module>& model, const py::object& loader, const py::dict& options,
         py::object progress) {
        const auto o = fit_options(options);
        CallbackState state;
        auto fn = progress_fn(std::move(progress), state);
        auto warn = warning_fn(state);
        auto source = batch_source(loader);
        engine::EvalResult result;
        {
          py::gil_scoped_release no_gil;
          result = engine::evaluate(model, *source, o, fn, warn);
        }
        if (state.error) throw std::move(*state.error);
        if (state.interrupted) {
          PyErr_SetNone(PyExc_KeyboardInterrupt);
          throw py::error_already_set();
        }
        return eval_dict(result, o.task() == "segmentation");
      },
      py::arg("model"), py::arg("loader"), py::arg("options"), py::arg("progress"));

  e.def("python_module", &python_module, py::arg("module"),
        "A C++ module that runs this torch.nn.Module's Python forward, over its own tensors");

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
