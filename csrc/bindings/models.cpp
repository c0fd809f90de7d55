// Models and weights I/O in one translation unit: each unit that includes torch/extension.h
// costs about half a minute of build time on two cores.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <sstream>

#include "bindings/bindings.h"
#include "data/transforms.h"
#include "io/load_model.h"
#include "io/model_file.h"
#include "io/pretrained.h"
#include "io/weights.h"
#include "models/fast_path.h"
#include "models/module_tree.h"
#include "models/resnet.h"
#include "models/segmentation.h"

namespace py = pybind11;

namespace torchtl::bindings {
namespace {

using torch::nn::Module;
using ModulePtr = std::shared_ptr<Module>;
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

template <typename Items>
NamedTensors to_pairs(const Items& items) {
  NamedTensors out;
  for (const auto& item : items) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace

void init_models(py::module_& m) {
  // module_local: torch may register torch::nn::Module for its own bindings; ours stays separate.
  py::class_<Module, ModulePtr>(m, "Module", py::module_local(),
                                "A C++ torch::nn::Module; torchtl's Python modules wrap these.")
      .def("module_info",
           [](const Module& self) {
             auto info = models::module_info(self);
             return py::make_tuple(info.type, info.options, info.container);
           })
      .def("named_children",
           [](Module& self) {
             std::vector<std::pair<std::string, ModulePtr>> out;
             for (const auto& child : self.named_children()) out.emplace_back(child.key(), child.value());
             return out;
           })
      .def("named_parameters", [](Module& self, bool recurse) { return to_pairs(self.named_parameters(recurse)); },
           py::arg("recurse") = false)
      .def("named_buffers", [](Module& self, bool recurse) { return to_pairs(self.named_buffers(recurse)); },
           py::arg("recurse") = false)
      .def_property_readonly("training", &Module::is_training)
      .def("train", [](Module& self, bool mode) { self.train(mode); }, py::arg("mode") = true)
      .def("set_training_flags", &models::set_training_flags, py::arg("flags"))
      .def("forward",
           [](const ModulePtr& self, const torch::Tensor& input) {
             auto forward = models::tensor_forward(self);
             py::gil_scoped_release no_gil;
             return forward(input);
           })
      .def("replace_child", [](Module& self, const std::string& name, ModulePtr child) {
        models::replace_child(self, name, std::move(child));
      })
      .def("adopt_tensors", &models::adopt_tensors, py::arg("parameters"), py::arg("buffers"))
      .def("__repr__", [](const Module& self) {
        std::ostringstream out;
        out << self;
        return out.str();
      });

  m.def("make_module", &models::make_module, py::arg("type"), py::arg("options"));
  m.def("exact_mode", &models::exact_mode, "Whether this thread runs models in exact mode (fast_path.h).");
  m.def("set_exact_mode", &models::set_exact_mode, py::arg("enabled"));
  m.def("cpu_supports_bf16", &models::cpu_supports_bf16, "AVX-512 BF16 or AMX on this CPU.");
  m.def("make_sequential", [](const std::vector<ModulePtr>& children) -> ModulePtr {
    torch::nn::Sequential seq;
    for (const auto& child : children) seq->push_back(models::to_any_module(child));
    return seq.ptr();
  });

  py::enum_<models::NormLayer>(m, "NormLayer", py::module_local())
      .value("BatchNorm2d", models::NormLayer::BatchNorm2d)
      .value("FrozenBatchNorm2d", models::NormLayer::FrozenBatchNorm2d);
  m.def(
      "resnet",
      [](const std::string& arch, int64_t num_classes, bool zero_init_residual,
         const std::vector<bool>& replace_stride_with_dilation, std::optional<int64_t> groups,
         std::optional<int64_t> width_per_group, models::NormLayer norm_layer) -> ModulePtr {
        auto options = models::resnet_options(arch)
                           .num_classes(num_classes)
                           .zero_init_residual(zero_init_residual)
                           .replace_stride_with_dilation(replace_stride_with_dilation);
        if (groups) options.groups(*groups);
        if (width_per_group) options.width_per_group(*width_per_group);
        options.norm_layer(norm_layer);
        return models::ResNet(options).ptr();
      },
      py::arg("arch"), py::arg("num_classes") = 1000, py::arg("zero_init_residual") = false,
      py::arg("replace_stride_with_dilation") = std::vector<bool>{false, false, false},
      py::arg("groups") = py::none(), py::arg("width_per_group") = py::none(),
      py::arg("norm_layer") = models::NormLayer::BatchNorm2d);
  m.def("deeplabv3_resnet", [](const std::string& backbone, int64_t num_classes, bool aux_loss) -> ModulePtr {
    return models::deeplabv3_resnet(backbone, num_classes, aux_loss).ptr();
  });
  m.def("fcn_resnet", [](const std::string& backbone, int64_t num_classes, bool aux_loss) -> ModulePtr {
    return models::fcn_resnet(backbone, num_classes, aux_loss).ptr();
  });
  m.def("forward_dict", [](const ModulePtr& module, const torch::Tensor& input) {
    torch::OrderedDict<std::string, torch::Tensor> out;
    if (auto model = std::dynamic_pointer_cast<models::SegmentationModelImpl>(module)) {
      py::gil_scoped_release no_gil;
      out = model->forward(input);
    } else if (auto getter = std::dynamic_pointer_cast<models::IntermediateLayerGetterImpl>(module)) {
      py::gil_scoped_release no_gil;
      out = getter->forward(input);
    } else {
      TORCH_CHECK_TYPE(false, module->name(), " does not return a dict");
    }
    return to_pairs(out);
  });
  m.def("reset_classifier", [](const ModulePtr& model, int64_t num_classes) {
    auto resnet = std::dynamic_pointer_cast<models::ResNetImpl>(model);
    TORCH_CHECK_TYPE(resnet != nullptr, "reset_classifier: expected a ResNet, got ", model->name());
    resnet->reset_classifier(num_classes);
  });
}

void init_io(py::module_& m) {
  m.def("state_dict", [](const Module& module) { return io::state_dict(module); });
  m.def(
      "load_state_dict",
      [](Module& module, const NamedTensors& weights, bool strict) {
        io::LoadResult result;
        {
          py::gil_scoped_release no_gil;
          result = io::load_state_dict(module, weights, strict);
        }
        return py::make_tuple(result.missing_keys, result.unexpected_keys);
      },
      py::arg("module"), py::arg("weights"), py::arg("strict") = true);
  m.def("read_weights", &io::read_weights, py::arg("path"), py::call_guard<py::gil_scoped_release>());
  m.def("strip_module_prefix", &io::strip_module_prefix, py::arg("weights"));
  m.def("head_num_classes", &io::head_num_classes, py::arg("weights"), py::arg("key"));
  m.def(
      "load_pretrained",
      [](Module& module, const NamedTensors& weights, const std::vector<std::string>& head_prefixes, bool strict) {
        io::PretrainedResult result;
        {
          py::gil_scoped_release no_gil;
          result = io::load_pretrained(module, weights, head_prefixes, strict);
        }
        return py::make_tuple(result.reinitialised, result.missing_keys, result.unexpected_keys);
      },
      py::arg("module"), py::arg("weights"), py::arg("head_prefixes"), py::arg("strict") = true);
  m.def("save_state_dict", &io::save_state_dict, py::arg("weights"), py::arg("path"),
        py::call_guard<py::gil_scoped_release>());
  // Model files (io/model_file.h): Python passes the metadata record as JSON text both ways.
  m.def("read_model_record", &io::read_model_record, py::arg("path"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "check_model_metadata",
      [](const std::string& json, const std::string& source) { return io::to_json(io::parse_model_metadata(json, source)); },
      py::arg("json"), py::arg("source"));
  m.def(
      "save_model_file",
      [](const NamedTensors& weights, const std::string& json, const std::string& path) {
        io::save_model_file(weights, io::parse_model_metadata(json, path), path);
      },
      py::arg("weights"), py::arg("metadata"), py::arg("path"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "read_model_file",
      [](const std::string& path, const std::string& arch, std::optional<int64_t> num_classes) {
        auto file = io::read_model_file(path, LoadModelOptions().arch(arch).num_classes(num_classes));
        return py::make_tuple(io::to_json(file.metadata), file.weights);
      },
      py::arg("path"), py::arg("arch") = "", py::arg("num_classes") = std::nullopt);
  m.def("builder_task", &io::builder_task, py::arg("builder"));
  m.def("default_eval_transform_json", [](const std::string& task) {
    io::ModelMetadata m;
    m.task = task;
    m.transform = io::default_eval_transform(task);
    return io::Json::parse(io::to_json(m), "").find("transform")->dump();
  }, py::arg("task"));
  // The metadata record's "transform" of a torchtl transform (its evaluation preset).
  m.def(
      "eval_transform_json",
      [](const data::ClassificationTransform& t) {
        io::ModelMetadata m;
        m.transform = io::eval_transform(t.options());
        return io::Json::parse(io::to_json(m), "").find("transform")->dump();
      },
      py::arg("transform"));
  m.def(
      "eval_transform_json",
      [](const data::SegmentationTransform& t) {
        io::ModelMetadata m;
        m.task = "segmentation";
        m.transform = io::eval_transform(t.options());
        return io::Json::parse(io::to_json(m), "").find("transform")->dump();
      },
      py::arg("transform"));
}

}  // namespace torchtl::bindings
