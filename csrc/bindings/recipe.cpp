// The references' recipe pieces in torchtl._C.engine (ExponentialMovingAverage, weight-decay
// groups, LRSchedule) and torchtl._C.data (RASampler's indices).
#include <pybind11/stl.h>
#include <torch/extension.h>

#include "bindings/bindings.h"
#include "data/ra_sampler.h"
#include "engine/ema.h"
#include "engine/schedule.h"
#include "engine/weight_decay.h"

namespace py = pybind11;

namespace torchtl::bindings {

void init_recipe(py::module_& m) {
  auto e = py::reinterpret_borrow<py::module_>(m.attr("engine"));
  auto d = py::reinterpret_borrow<py::module_>(m.attr("data"));

  e.def("adjusted_ema_decay", &engine::adjusted_ema_decay, py::arg("model_ema_decay"), py::arg("batch_size"),
        py::arg("world_size"), py::arg("model_ema_steps"), py::arg("epochs"));
  py::class_<engine::ExponentialMovingAverage, std::shared_ptr<engine::ExponentialMovingAverage>>(
      e, "ExponentialMovingAverage")
      .def(py::init([](const std::shared_ptr<torch::nn::Module>& model, double decay, const std::string& device) {
             return std::make_shared<engine::ExponentialMovingAverage>(*model, decay, torch::Device(device));
           }),
           py::arg("model"), py::arg("decay"), py::arg("device") = "cpu")
      .def(
          "update_parameters",
          [](engine::ExponentialMovingAverage& self, const std::shared_ptr<torch::nn::Module>& model) {
            py::gil_scoped_release no_gil;
            self.update_parameters(*model);
          },
          py::arg("model"))
      .def("reset_n_averaged", &engine::ExponentialMovingAverage::reset_n_averaged)
      .def_property_readonly("n_averaged", &engine::ExponentialMovingAverage::n_averaged)
      .def_property_readonly("decay", &engine::ExponentialMovingAverage::decay)
      .def("copy_to",
           [](const engine::ExponentialMovingAverage& self, const std::shared_ptr<torch::nn::Module>& model) {
             self.copy_to(*model);
           })
      .def("state_dict", [](const engine::ExponentialMovingAverage& self) {
        py::dict out;
        for (const auto& item : self.state_dict()) out[py::str(item.key().toStringRef())] = item.value().toTensor();
        return out;
      })
      .def("load_state_dict", [](engine::ExponentialMovingAverage& self, const py::dict& state) {
        c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
        for (const auto& item : state) dict.insert(item.first.cast<std::string>(), item.second.cast<torch::Tensor>());
        self.load_state_dict(dict);
      });

  e.def("split_normalization_params",
        [](const std::shared_ptr<torch::nn::Module>& model) { return engine::split_normalization_params(*model); },
        py::arg("model"));
  e.def(
      "weight_decay_groups",
      [](const std::shared_ptr<torch::nn::Module>& model, double weight_decay, std::optional<double> norm_weight_decay,
         std::optional<double> bias_weight_decay) {
        return engine::weight_decay_groups(*model, weight_decay, norm_weight_decay, bias_weight_decay);
      },
      py::arg("model"), py::arg("weight_decay"), py::arg("norm_weight_decay") = py::none(),
      py::arg("bias_weight_decay") = py::none());

  py::class_<engine::LRSchedule>(e, "LRSchedule")
      .def(py::init([](const std::string& kind, int64_t epochs, int64_t iters_per_epoch, int64_t step_size,
                       double gamma, double power, int64_t warmup_epochs, double warmup_factor,
                       const std::string& warmup_method, double lr_min) {
             return engine::LRSchedule(engine::ScheduleOptions{kind, epochs, iters_per_epoch, step_size, gamma, power,
                                                               warmup_epochs, warmup_factor, warmup_method, lr_min});
           }),
           py::arg("kind"), py::arg("epochs"), py::arg("iters_per_epoch") = 1, py::arg("step_size") = 30,
           py::arg("gamma") = 0.1, py::arg("power") = 0.9, py::arg("warmup_epochs") = 0,
           py::arg("warmup_factor") = 0.01, py::arg("warmup_method") = "linear", py::arg("lr_min") = 0.0)
      .def("factor", &engine::LRSchedule::factor, py::arg("it"))
      .def("lr", &engine::LRSchedule::lr, py::arg("it"), py::arg("base_lr"));

  d.def(
      "ra_sampler_indices",
      [](int64_t dataset_size, int64_t epoch, int64_t num_replicas, int64_t rank, bool shuffle, const py::object& seed,
         int64_t repetitions) {
        return data::ra_sampler_indices(
            dataset_size, epoch,
            data::RASamplerOptions{num_replicas, rank, shuffle, unsigned_arg(seed, "seed"), repetitions});
      },
      py::arg("dataset_size"), py::arg("epoch"), py::arg("num_replicas"), py::arg("rank"), py::arg("shuffle") = true,
      py::arg("seed") = 0, py::arg("repetitions") = 3);
}

}  // namespace torchtl::bindings
