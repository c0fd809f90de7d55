// The data pipeline's Python face: map files, transforms, datasets and the threaded loader.
// Every call that decodes or waits for a batch releases the GIL.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <filesystem>

#include "bindings/bindings.h"
#include "data/datasets.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/map_file.h"
#include "data/transforms.h"

namespace py = pybind11;

namespace torchtl::bindings {

at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

namespace {

using namespace torchtl::data;

// A path from C++ (bytes, as the file system stores them) as os.fsdecode shows it: bytes that are
// not UTF-8 become lone surrogates, and os.fsencode (what torchtl.data passes back) restores them.
py::str fs_path(const std::string& path) {
  PyObject* text = PyUnicode_DecodeFSDefaultAndSize(path.data(), static_cast<Py_ssize_t>(path.size()));
  if (text == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(text);
}

// Messages carry paths through printable() already; this also covers the messages of other
// libraries (torchvision's decoders) that quote a path as is.
py::str message(const std::string& text) {
  PyObject* out = PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "backslashreplace");
  if (out == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(out);
}

py::list messages(const std::vector<std::string>& texts) {
  py::list out;
  for (const auto& text : texts) out.append(message(text));
  return out;
}

}  // namespace

// Seeds and epochs are unsigned 64-bit in C++. Any Python integer comes in, so that a negative or
// too large one is a ValueError naming the argument, not pybind11's list of signatures.
uint64_t unsigned_arg(const py::handle& value, const char* name) {
  py::int_ number;
  try {
    number = py::reinterpret_steal<py::int_>(PyNumber_Index(value.ptr()));
    if (!number) throw py::error_already_set();
  } catch (const py::error_already_set&) {
    throw py::type_error(std::string(name) + " must be an integer, got " + std::string(py::str(py::type::of(value).attr("__name__"))));
  }
  const auto out = PyLong_AsUnsignedLongLong(number.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(std::string(name) + " must be an integer in [0, 2**64), got " + std::string(py::str(number)));
  }
  return static_cast<uint64_t>(out);
}

namespace {

// `text` with the bytes that are not UTF-8 as \xNN: what a c10 error must carry for Python to
// show it.
std::string valid_utf8(const std::string& text) { return message(text).cast<std::string>(); }

// Re-throws a c10 error of type E whose message is not UTF-8 with the message repaired; any other
// error goes on unchanged.
template <typename E>
void rethrow_as_utf8(const E& e) {
  const std::string original = e.what_without_backtrace();
  auto repaired = valid_utf8(original);
  if (repaired == original) throw;
  throw E(std::move(repaired));
}

py::tuple entry_tuple(const MapEntry& e, bool segmentation) {
  if (segmentation) return py::make_tuple(fs_path(e.path), fs_path(e.target), e.line);
  return py::make_tuple(fs_path(e.path), e.label, e.line);
}

// What MapDataset and SegmentationMapDataset show Python alike, beside their constructors.
template <typename Dataset>
void def_map_file_dataset(py::class_<Dataset, std::shared_ptr<Dataset>>& c, bool segmentation) {
  c.def("__len__", [](const Dataset& self) { return *self.size(); })
      .def(
          "load",
          [](const Dataset& self, size_t index, const py::object& epoch) {
            const auto e = unsigned_arg(epoch, "epoch");
            py::gil_scoped_release no_gil;
            auto example = self.load(index, e);
            return std::make_pair(example.data, example.target);
          },
          py::arg("index"), py::arg("epoch") = 0)
      .def("sample_name", &Dataset::sample_name)
      .def_property_readonly("map_file", [](const Dataset& self) { return fs_path(self.map_file().path); })
      .def_property_readonly("entries",
                             [segmentation](const Dataset& self) {
                               py::list out;
                               for (const auto& e : self.map_file().entries) out.append(entry_tuple(e, segmentation));
                               return out;
                             })
      .def_property_readonly("skipped_lines", [](const Dataset& self) { return messages(self.map_file().skipped); });
}

}  // namespace

void init_data(py::module_& m) {
  auto d = m.def_submodule("data", "torchtl::data: map files, decoding, transforms, datasets, threaded loader");

  // torchtl's FileNotFoundError and IsADirectoryError (also when re-thrown from a worker thread)
  // become Python's; every other c10 error falls through to torch's own translator (ValueError,
  // TypeError, NotImplementedError, ...), re-thrown first with its message made valid UTF-8 where
  // it quotes a non-UTF-8 path (Python would raise a bare UnicodeDecodeError instead).
  // std::filesystem errors become OSError with their errno (PermissionError, ...). Local to this
  // extension, and so to every torchtl call.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FileNotFoundError& e) {
      PyErr_SetObject(PyExc_FileNotFoundError, message(e.what_without_backtrace()).ptr());
    } catch (const IsADirectoryError& e) {
      PyErr_SetObject(PyExc_IsADirectoryError, message(e.what_without_backtrace()).ptr());
    } catch (const c10::IndexError& e) {
      rethrow_as_utf8(e);
    } catch (const c10::ValueError& e) {
      rethrow_as_utf8(e);
    } catch (const c10::TypeError& e) {
      rethrow_as_utf8(e);
    } catch (const c10::Error& e) {
      // Other subclasses (out of memory, ...) quote no paths.
      if (typeid(e) != typeid(c10::Error)) throw;
      rethrow_as_utf8(e);
    } catch (const std::filesystem::filesystem_error& e) {
      py::object error = py::reinterpret_borrow<py::object>(PyExc_OSError)(e.code().value(), message(e.what()));
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
    }
  });

  d.def("image_ops_available", &image_ops_available);
  // The choice of decoders, made once: "" when TorchCodec's decode, else why torchvision's do.
  d.def(
      "load_image_ops",
      [](const std::string& library) {
        load_image_ops(library);
        return image_backend_fallback_reason();
      },
      py::arg("library") = "", py::call_guard<py::gil_scoped_release>());
  d.def(
      "read_image",
      [](const std::string& path) {
        py::gil_scoped_release no_gil;
        return read_image(path);
      },
      py::arg("path"));
  d.def(
      "read_jpegs",
      [](const std::vector<std::string>& paths, const c10::Device& device) {
        py::gil_scoped_release no_gil;
        std::vector<torch::Tensor> bytes;
        for (const auto& path : paths) {
          bytes.push_back(read_file(path));
          TORCH_CHECK_VALUE(is_jpeg(bytes.back()), "'", path, "' is not a JPEG file; read it with read_image");
        }
        return decode_jpegs_rgb(bytes, device);
      },
      py::arg("paths"), py::arg("device"));
  d.def(
      "read_mask",
      [](const std::string& path) {
        py::gil_scoped_release no_gil;
        return decode_mask(read_file(path));
      },
      py::arg("path"));

  d.def(
      "read_map_file",
      [](const std::string& path, bool segmentation, int64_t num_classes, bool skip_bad_lines) {
        MapFile map;
        {
          py::gil_scoped_release no_gil;
          map = read_map_file(path, MapFileOptions()
                                        .kind(segmentation ? MapKind::Segmentation : MapKind::Classification)
                                        .num_classes(num_classes)
                                        .skip_bad_lines(skip_bad_lines));
        }
        py::list entries;
        for (const auto& e : map.entries) entries.append(entry_tuple(e, segmentation));
        return py::make_tuple(entries, messages(map.skipped));
      },
      py::arg("path"), py::arg("segmentation") = false, py::arg("num_classes") = -1, py::arg("skip_bad_lines") = false);
  d.def("write_image_folder_map", &write_image_folder_map, py::arg("root"), py::arg("map_path"),
        py::arg("classes_path"), py::call_guard<py::gil_scoped_release>());
  d.def("write_voc_map", &write_voc_map, py::arg("root"), py::arg("split"), py::arg("map_path"),
        py::call_guard<py::gil_scoped_release>());

  py::class_<ClassificationTransform, std::shared_ptr<ClassificationTransform>>(d, "ClassificationTransform")
      .def(py::init([](bool train, int64_t size, int64_t resize_size, std::vector<double> mean, std::vector<double> std,
                       std::array<double, 2> scale, std::array<double, 2> ratio, double hflip_prob,
                       const std::string& interpolation, std::string auto_augment, int64_t ra_magnitude,
                       int64_t augmix_severity, double random_erase) {
             return std::make_shared<ClassificationTransform>(ClassificationTransformOptions()
                                                                  .train(train)
                                                                  .size(size)
                                                                  .resize_size(resize_size)
                                                                  .mean(std::move(mean))
                                                                  .std(std::move(std))
                                                                  .scale(scale)
                                                                  .ratio(ratio)
                                                                  .hflip_prob(hflip_prob)
                                                                  .interpolation(interpolation_from_name(interpolation))
                                                                  .auto_augment(std::move(auto_augment))
                                                                  .ra_magnitude(ra_magnitude)
                                                                  .augmix_severity(augmix_severity)
                                                                  .random_erase(random_erase));
           }),
           py::arg("train"), py::arg("size"), py::arg("resize_size"), py::arg("mean"), py::arg("std"),
           py::arg("scale"), py::arg("ratio"), py::arg("hflip_prob"), py::arg("interpolation") = "bilinear",
           py::arg("auto_augment") = "", py::arg("ra_magnitude") = 9, py::arg("augmix_severity") = 3,
           py::arg("random_erase") = 0.0)
      .def(
          "__call__",
          [](const ClassificationTransform& self, const torch::Tensor& image, const py::object& seed) {
            auto generator = seeded(unsigned_arg(seed, "seed"));
            py::gil_scoped_release no_gil;
            return self(image, generator);
          },
          py::arg("image"), py::arg("seed") = 0)
      .def_property_readonly("train", [](const ClassificationTransform& self) { return self.options().train(); })
      .def("__repr__", &ClassificationTransform::repr);

  py::class_<SegmentationTransform, std::shared_ptr<SegmentationTransform>>(d, "SegmentationTransform")
      .def(py::init([](bool train, int64_t base_size, int64_t crop_size, double hflip_prob, std::vector<double> mean,
                       std::vector<double> std, int64_t ignore_index) {
             return std::make_shared<SegmentationTransform>(SegmentationTransformOptions()
                                                                .train(train)
                                                                .base_size(base_size)
                                                                .crop_size(crop_size)
                                                                .hflip_prob(hflip_prob)
                                                                .mean(std::move(mean))
                                                                .std(std::move(std))
                                                                .ignore_index(ignore_index));
           }),
           py::arg("train"), py::arg("base_size"), py::arg("crop_size"), py::arg("hflip_prob"), py::arg("mean"),
           py::arg("std"), py::arg("ignore_index"))
      .def(
          "__call__",
          [](const SegmentationTransform& self, const torch::Tensor& image, const torch::Tensor& mask,
             const py::object& seed) {
            auto generator = seeded(unsigned_arg(seed, "seed"));
            py::gil_scoped_release no_gil;
            return self(image, mask, generator);
          },
          py::arg("image"), py::arg("mask"), py::arg("seed") = 0)
      .def_property_readonly("train", [](const SegmentationTransform& self) { return self.options().train(); })
      .def("__repr__", &SegmentationTransform::repr);

  py::class_<MapDataset, std::shared_ptr<MapDataset>> map_dataset(d, "MapDataset");
  map_dataset.def(py::init([](const std::string& map_file, std::shared_ptr<ClassificationTransform> transform,
                               int64_t num_classes, const py::object& seed, bool skip_bad_lines) {
                    auto options = MapDatasetOptions()
                                       .transform(std::move(transform))
                                       .num_classes(num_classes)
                                       .seed(unsigned_arg(seed, "seed"))
                                       .skip_bad_lines(skip_bad_lines);
                    py::gil_scoped_release no_gil;
                    return std::make_shared<MapDataset>(map_file, std::move(options));
                  }),
                  py::arg("map_file"), py::arg("transform"), py::arg("num_classes"), py::arg("seed"),
                  py::arg("skip_bad_lines"));
  def_map_file_dataset(map_dataset, /*segmentation=*/false);

  py::class_<SegmentationMapDataset, std::shared_ptr<SegmentationMapDataset>> segmentation_dataset(
      d, "SegmentationMapDataset");
  segmentation_dataset.def(
      py::init([](const std::string& map_file, std::shared_ptr<SegmentationTransform> transform, int64_t num_classes,
                  int64_t ignore_index, const py::object& seed, bool skip_bad_lines) {
        auto options = SegmentationMapDatasetOptions()
                           .transform(std::move(transform))
                           .num_classes(num_classes)
                           .ignore_index(ignore_index)
                           .seed(unsigned_arg(seed, "seed"))
                           .skip_bad_lines(skip_bad_lines);
        py::gil_scoped_release no_gil;
        return std::make_shared<SegmentationMapDataset>(map_file, std::move(options));
      }),
      py::arg("map_file"), py::arg("transform"), py::arg("num_classes"), py::arg("ignore_index"), py::arg("seed"),
      py::arg("skip_bad_lines"));
  def_map_file_dataset(segmentation_dataset, /*segmentation=*/true);

  py::class_<LoaderEpoch>(d, "LoaderEpoch")
      .def(
          "next",
          [](LoaderEpoch& self) -> py::object {
            std::optional<Batch> batch;
            {
              py::gil_scoped_release no_gil;
              batch = self.next();
            }
            if (!batch) return py::none();
            return py::make_tuple(py::cast(batch->fields), messages(batch->skipped), py::cast(batch->indices));
          })
      .def("close", &LoaderEpoch::close, py::call_guard<py::gil_scoped_release>())
      .def("__len__", &LoaderEpoch::num_batches);

  py::class_<ThreadedLoader>(d, "ThreadedLoader")
      .def(py::init([](py::object dataset, int64_t batch_size, bool shuffle, int64_t num_workers,
                       const py::object& seed, bool drop_last, bool pin_memory, int64_t prefetch_factor,
                       bool skip_errors, int64_t num_replicas, int64_t rank,
                       const std::optional<std::string>& decode_device) {
             auto options = LoaderOptions()
                                .batch_size(batch_size)
                                .shuffle(shuffle)
                                .num_workers(num_workers)
                                .seed(unsigned_arg(seed, "seed"))
                                .drop_last(drop_last)
                                .pin_memory(pin_memory)
                                .prefetch_factor(prefetch_factor)
                                .skip_errors(skip_errors)
                                .num_replicas(num_replicas)
                                .rank(rank);
             if (decode_device) options.decode_device(torch::Device(*decode_device));
             if (py::isinstance<MapDataset>(dataset)) {
               return make_loader(dataset.cast<std::shared_ptr<MapDataset>>(), options);
             }
             if (py::isinstance<SegmentationMapDataset>(dataset)) {
               return make_loader(dataset.cast<std::shared_ptr<SegmentationMapDataset>>(), options);
             }
             throw py::type_error("ThreadedLoader takes a MapDataset or SegmentationMapDataset");
           }),
           py::arg("dataset"), py::arg("batch_size"), py::arg("shuffle"), py::arg("num_workers"), py::arg("seed"),
           py::arg("drop_last"), py::arg("pin_memory"), py::arg("prefetch_factor"), py::arg("skip_errors"),
           py::arg("num_replicas") = 1, py::arg("rank") = 0, py::arg("decode_device") = py::none())
      .def("__len__", &ThreadedLoader::num_batches)
      .def(
          "epoch", [](const ThreadedLoader& self, const py::object& epoch) { return self.epoch(unsigned_arg(epoch, "epoch")); },
          py::arg("epoch"));
}

}  // namespace torchtl::bindings
