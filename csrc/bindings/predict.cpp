// torchtl.Predictor: the C++ Predictor (predict/predictor.h) as it is, under the GIL only to
// convert its arguments.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <sstream>

#include "bindings/bindings.h"
#include "io/model_file.h"
#include "predict/overlay.h"
#include "predict/predictor.h"

namespace py = pybind11;

namespace torchtl::bindings {
namespace {

// A path (str or os.PathLike, encoded as the file system stores it), encoded bytes, or a 1-D
// uint8 tensor of them.
ImageSource image_source(const py::handle& image) {
  if (py::isinstance<py::bytes>(image) || py::isinstance<py::bytearray>(image)) {
    return ImageSource::from_bytes(py::bytes(py::reinterpret_borrow<py::object>(image)).cast<std::string>());
  }
  if (THPVariable_Check(image.ptr())) return ImageSource(THPVariable_Unpack(image.ptr()));
  const auto os = py::module_::import("os");
  if (py::isinstance<py::str>(image) || py::hasattr(image, "__fspath__")) {
    return ImageSource(os.attr("fsencode")(image).cast<std::string>());
  }
  throw py::type_error("an image must be a path (str or os.PathLike), its encoded bytes, or a 1-D uint8 tensor of "
                       "them; got " + std::string(py::str(image.get_type().attr("__name__"))));
}

std::vector<ImageSource> image_sources(const py::object& images) {
  if (py::isinstance<py::str>(images) || py::isinstance<py::bytes>(images) || py::hasattr(images, "__fspath__") ||
      THPVariable_Check(images.ptr())) {
    throw py::type_error("images must be a list of images (paths, encoded bytes or tensors); for one image pass [image]");
  }
  std::vector<ImageSource> out;
  for (const auto& image : images) out.push_back(image_source(image));
  return out;
}

}  // namespace

void init_predict(py::module_& m) {
  m.def("voc_palette", &predict::voc_palette);
  m.def("overlay_mask", &predict::overlay_mask, py::arg("image"), py::arg("mask"), py::arg("alpha") = 0.5);
  py::class_<Prediction>(m, "Prediction", "One class of one image: index, label and softmax probability.")
      .def_readonly("index", &Prediction::index)
      .def_readonly("label", &Prediction::label)
      .def_readonly("probability", &Prediction::probability)
      .def("__repr__", [](const Prediction& p) {
        std::ostringstream out;
        out << "Prediction(index=" << p.index << ", label=" << py::repr(py::str(p.label)).cast<std::string>()
            << ", probability=" << py::repr(py::float_(p.probability)).cast<std::string>() << ")";
        return out.str();
      });

  py::class_<Predictor, std::shared_ptr<Predictor>>(m, "Predictor")
      .def(py::init([](const py::object& path, const py::object& device, int64_t batch_size, int64_t num_workers) {
             const auto file = py::module_::import("os").attr("fsencode")(path).cast<std::string>();
             std::optional<torch::Device> d;
             if (!device.is_none()) d = torch::Device(py::str(device).cast<std::string>());
             py::gil_scoped_release no_gil;
             return std::make_shared<Predictor>(file, d, PredictorOptions().batch_size(batch_size).num_workers(num_workers));
           }),
           py::arg("path"), py::arg("device") = py::none(), py::kw_only(), py::arg("batch_size") = 8,
           py::arg("num_workers") = 2)
      .def(
          "classify",
          [](const Predictor& self, const py::object& images, int64_t topk) {
            auto sources = image_sources(images);
            py::gil_scoped_release no_gil;
            return self.classify(sources, topk);
          },
          py::arg("images"), py::arg("topk") = 5)
      .def(
          "segment",
          [](const Predictor& self, const py::object& images) {
            auto sources = image_sources(images);
            py::gil_scoped_release no_gil;
            return self.segment(sources);
          },
          py::arg("images"))
      .def_property_readonly("metadata",
                             [](const Predictor& self) {
                               return py::module_::import("json").attr("loads")(io::to_json(self.metadata()));
                             })
      .def_property_readonly("task", &Predictor::task)
      .def_property_readonly("device", [](const Predictor& self) { return self.device().str(); })
      .def_property_readonly("batch_size", [](const Predictor& self) { return self.options().batch_size(); })
      .def_property_readonly("num_workers", [](const Predictor& self) { return self.options().num_workers(); });
}

}  // namespace torchtl::bindings
