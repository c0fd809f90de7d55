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

// How a fit option crosses into Python: as its own type, or as None where C++ has an empty value.
template <typename T>
struct OptionArg {
  using type = T;
  static T to_cpp(T value) { return value; }
  static T to_python(T value) { return value; }
};
template <>
struct OptionArg<torch::Tensor> {
  using type = std::optional<torch::Tensor>;
  static torch::Tensor to_cpp(const type& value) { return value.value_or(torch::Tensor()); }
  static type to_python(const torch::Tensor& value) { return value.defined() ? type(value) : std::nullopt; }
};
// torch.distributed's own ProcessGroup object (torch._C._distributed_c10d), shared with C++.
template <>
struct OptionArg<c10::intrusive_ptr<c10d::ProcessGroup>> {
  using type = py::object;
  static c10::intrusive_ptr<c10d::ProcessGroup> to_cpp(const py::object& value) {
    return value.is_none() ? nullptr : value.cast<c10::intrusive_ptr<c10d::ProcessGroup>>();
  }
  static py::object to_python(const c10::intrusive_ptr<c10d::ProcessGroup>& value) {
    return value ? py::cast(value) : py::none();
  }
};

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

engine::EpochEndFn epoch_end_fn(py::object callback, CallbackState& state) {
  return [callback, &state](const engine::EpochRecord& r) {
    py::gil_scoped_acquire gil;
    try {
      if (!callback.is_none()) callback(r);
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
      py::object keep_going = callback(p);
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

// One keyword argument per fit option (TORCHTL_FIT_OPTIONS): a parameter of the bound function,
// its py::arg with the C++ default, and its copy into FitOptions.
#define TORCHTL_OPTION_PARAMETER(T, name, default_value) , OptionArg<T>::type name
#define TORCHTL_OPTION_PY_ARG(T, name, default_value) , py::arg(#name) = OptionArg<T>::to_python(FitOptions().name())
#define TORCHTL_OPTION_SET(T, name, default_value) options.name(OptionArg<T>::to_cpp(name));
#define TORCHTL_OPTION_DEFAULT(T, name, default_value) defaults[#name] = OptionArg<T>::to_python(FitOptions().name());

  py::class_<engine::ParamGroup>(e, "ParamGroup", "One torch.optim parameter group, as fit's param_groups take it")
      .def(py::init<>())
      .def_readwrite("params", &engine::ParamGroup::params)
      .def_readwrite("lr", &engine::ParamGroup::lr)
      .def_readwrite("weight_decay", &engine::ParamGroup::weight_decay)
      .def_readwrite("momentum", &engine::ParamGroup::momentum)
      .def_readwrite("dampening", &engine::ParamGroup::dampening)
      .def_readwrite("nesterov", &engine::ParamGroup::nesterov)
      .def_readwrite("beta1", &engine::ParamGroup::beta1)
      .def_readwrite("beta2", &engine::ParamGroup::beta2)
      .def_readwrite("eps", &engine::ParamGroup::eps)
      .def_readwrite("amsgrad", &engine::ParamGroup::amsgrad)
      .def_readwrite("alpha", &engine::ParamGroup::alpha)
      .def_readwrite("centered", &engine::ParamGroup::centered);

  py::class_<engine::Progress>(e, "Progress", "Where a pass stands (epoch and batch count from 0)")
      .def_readonly("training", &engine::Progress::training)
      .def_readonly("epoch", &engine::Progress::epoch)
      .def_readonly("epochs", &engine::Progress::epochs)
      .def_readonly("batch", &engine::Progress::batch)
      .def_readonly("num_batches", &engine::Progress::num_batches)
      .def_readonly("images", &engine::Progress::images)
      .def_readonly("loss", &engine::Progress::loss)
      .def_readonly("accuracy", &engine::Progress::accuracy);
  py::class_<engine::EvalResult>(e, "EvalResult")
      .def_readonly("loss", &engine::EvalResult::loss)
      .def_readonly("acc1", &engine::EvalResult::acc1)
      .def_readonly("acc5", &engine::EvalResult::acc5)
      .def_readonly("pixel_accuracy", &engine::EvalResult::pixel_accuracy)
      .def_readonly("mean_iou", &engine::EvalResult::mean_iou)
      .def_readonly("iou", &engine::EvalResult::iou)
      .def_readonly("confusion", &engine::EvalResult::confusion)
      .def_readonly("images", &engine::EvalResult::images)
      .def_readonly("seconds", &engine::EvalResult::seconds)
      .def_readonly("skipped", &engine::EvalResult::skipped);
  py::class_<engine::EpochRecord>(e, "EpochRecord", "One epoch of fit (epoch counts from 0)")
      .def_readonly("epoch", &engine::EpochRecord::epoch)
      .def_readonly("lr", &engine::EpochRecord::lr)
      .def_readonly("train_loss", &engine::EpochRecord::train_loss)
      .def_readonly("train_acc", &engine::EpochRecord::train_acc)
      .def_readonly("step_losses", &engine::EpochRecord::step_losses)
      .def_readonly("nonfinite_losses", &engine::EpochRecord::nonfinite_losses)
      .def_readonly("skipped", &engine::EpochRecord::skipped)
      .def_readonly("images", &engine::EpochRecord::images)
      .def_readonly("seconds", &engine::EpochRecord::seconds)
      .def_readonly("images_per_second", &engine::EpochRecord::images_per_second)
      .def_readonly("used_feature_cache", &engine::EpochRecord::used_feature_cache)
      .def_readonly("has_val", &engine::EpochRecord::has_val)
      .def_readonly("val", &engine::EpochRecord::val)
      .def_readonly("best_metric", &engine::EpochRecord::best_metric)
      .def_readonly("best_epoch", &engine::EpochRecord::best_epoch);
  py::class_<engine::FitResult>(e, "FitResult")
      .def_readonly("epochs", &engine::FitResult::epochs)
      .def_readonly("interrupted", &engine::FitResult::interrupted)
      .def_readonly("best_metric", &engine::FitResult::best_metric)
      .def_readonly("best_epoch", &engine::FitResult::best_epoch);

  py::dict defaults;
  TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_DEFAULT)
  e.attr("FIT_OPTIONS") = defaults;
  e.attr("FIT_CHOICES") = engine::fit_option_choices();

  e.def(
      "fit",
      [](const std::shared_ptr<torch::nn::Module>& model, const py::object& train, const py::object& val,
         py::object progress, py::object epoch_end TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_PARAMETER)) {
        FitOptions options;
        TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_SET)
        CallbackState state;
        auto fn = progress_fn(std::move(progress), state);
        auto on_epoch = epoch_end_fn(std::move(epoch_end), state);
        auto warn = warning_fn(state);
        auto train_source = batch_source(train);
        auto val_source = val.is_none() ? nullptr : batch_source(val);
        engine::FitResult result;
        {
          py::gil_scoped_release no_gil;
          result = engine::fit(model, *train_source, val_source.get(), options, fn, on_epoch, warn);
        }
        if (state.error) throw std::move(*state.error);
        return py::make_tuple(result, state.interrupted);
      },
      py::arg("model"), py::arg("train"), py::arg("val"), py::arg("progress"), py::arg("epoch_end"),
      py::kw_only() TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_PY_ARG));

  // fit()'s first check, for Python to make before it opens the run's logs.
  e.def(
      "check_fit_options",
      [](const py::args& positional TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_PARAMETER)) {
        TORCH_CHECK_TYPE(positional.empty(), "check_fit_options takes keyword arguments only");
        FitOptions options;
        TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_SET)
        engine::check_hyperparameters(options);
      } TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_PY_ARG));

  e.def(
      "evaluate",
      [](const std::shared_ptr<torch::nn::Module>& model, const py::object& loader,
         py::object progress TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_PARAMETER)) {
        FitOptions options;
        TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_SET)
        CallbackState state;
        auto fn = progress_fn(std::move(progress), state);
        auto warn = warning_fn(state);
        auto source = batch_source(loader);
        engine::EvalResult result;
        {
          py::gil_scoped_release no_gil;
          result = engine::evaluate(model, *source, options, fn, warn);
        }
        if (state.error) throw std::move(*state.error);
        if (state.interrupted) {
          PyErr_SetNone(PyExc_KeyboardInterrupt);
          throw py::error_already_set();
        }
        return result;
      },
      py::arg("model"), py::arg("loader"), py::arg("progress"), py::kw_only() TORCHTL_FIT_OPTIONS(TORCHTL_OPTION_PY_ARG));

#undef TORCHTL_OPTION_PARAMETER
#undef TORCHTL_OPTION_PY_ARG
#undef TORCHTL_OPTION_SET
#undef TORCHTL_OPTION_DEFAULT

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
