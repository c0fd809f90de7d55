// The data pipeline's Python face: map files, transforms, datasets and the threaded loader.
// Every call that decodes or waits for a batch releases the GIL.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include "bindings/bindings.h"
#include "data/datasets.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/map_file.h"
#include "data/transforms.h"

namespace py = pybind11;

namespace torchtl::bindings {
namespace {

using namespace torchtl::data;

at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

py::tuple entry_tuple(const MapEntry& e, bool segmentation) {
  if (segmentation) return py::make_tuple(e.path, e.target, e.line);
  return py::make_tuple(e.path, e.label, e.line);
}

template <typename Dataset>
ThreadedLoader make_loader(std::shared_ptr<Dataset> ds, const LoaderOptions& options) {
  auto size = ds->map_file().entries.size();
  return ThreadedLoader(
      [ds](size_t index, uint64_t epoch) {
        auto example = ds->load(index, epoch);
        return std::vector<torch::Tensor>{example.data, example.target};
      },
      [ds](size_t index) { return ds->describe(index); }, size, options);
}

}  // namespace

void init_data(py::module_& m) {
  auto d = m.def_submodule("data", "torchtl::data: map files, decoding, transforms, datasets, threaded loader");

  // torchtl's FileNotFoundError (also when re-thrown from a worker thread) becomes Python's; every
  // other c10 error falls through to torch's own translator (ValueError, TypeError,
  // NotImplementedError, ...). Local to this extension, and so to every torchtl call.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FileNotFoundError& e) {
      PyErr_SetString(PyExc_FileNotFoundError, e.what_without_backtrace());
    }
  });

  d.def("image_ops_available", &image_ops_available);
  d.def(
      "read_image",
      [](const std::string& path) {
        py::gil_scoped_release no_gil;
        return decode_rgb(read_file(path));
      },
      py::arg("path"));
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
        return py::make_tuple(entries, map.skipped);
      },
      py::arg("path"), py::arg("segmentation") = false, py::arg("num_classes") = -1, py::arg("skip_bad_lines") = false);
  d.def("write_image_folder_map", &write_image_folder_map, py::arg("root"), py::arg("map_path"),
        py::arg("classes_path"), py::call_guard<py::gil_scoped_release>());
  d.def("write_voc_map", &write_voc_map, py::arg("root"), py::arg("split"), py::arg("map_path"),
        py::call_guard<py::gil_scoped_release>());
  d.def("mix_seed", &mix_seed, py::arg("seed"), py::arg("epoch"), py::arg("index"));

  py::class_<ClassificationTransform, std::shared_ptr<ClassificationTransform>>(d, "ClassificationTransform")
      .def(py::init([](bool train, int64_t size, int64_t resize_size, std::vector<double> mean, std::vector<double> std,
                       std::array<double, 2> scale, std::array<double, 2> ratio, double hflip_prob) {
             return std::make_shared<ClassificationTransform>(ClassificationTransformOptions()
                                                                  .train(train)
                                                                  .size(size)
                                                                  .resize_size(resize_size)
                                                                  .mean(std::move(mean))
                                                                  .std(std::move(std))
                                                                  .scale(scale)
                                                                  .ratio(ratio)
                                                                  .hflip_prob(hflip_prob));
           }),
           py::arg("train"), py::arg("size"), py::arg("resize_size"), py::arg("mean"), py::arg("std"),
           py::arg("scale"), py::arg("ratio"), py::arg("hflip_prob"))
      .def(
          "__call__",
          [](const ClassificationTransform& self, const torch::Tensor& image, uint64_t seed) {
            py::gil_scoped_release no_gil;
            auto generator = seeded(seed);
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
          [](const SegmentationTransform& self, const torch::Tensor& image, const torch::Tensor& mask, uint64_t seed) {
            py::gil_scoped_release no_gil;
            auto generator = seeded(seed);
            return self(image, mask, generator);
          },
          py::arg("image"), py::arg("mask"), py::arg("seed") = 0)
      .def_property_readonly("train", [](const SegmentationTransform& self) { return self.options().train(); })
      .def("__repr__", &SegmentationTransform::repr);

  py::class_<MapDataset, std::shared_ptr<MapDataset>>(d, "MapDataset")
      .def(py::init([](const std::string& map_file, std::shared_ptr<ClassificationTransform> transform,
                       int64_t num_classes, uint64_t seed, bool skip_bad_lines) {
             py::gil_scoped_release no_gil;
             return std::make_shared<MapDataset>(map_file, MapDatasetOptions()
                                                               .transform(std::move(transform))
                                                               .num_classes(num_classes)
                                                               .seed(seed)
                                                               .skip_bad_lines(skip_bad_lines));
           }),
           py::arg("map_file"), py::arg("transform"), py::arg("num_classes"), py::arg("seed"),
           py::arg("skip_bad_lines"))
      .def("__len__", [](const MapDataset& self) { return *self.size(); })
      .def(
          "load",
          [](const MapDataset& self, size_t index, uint64_t epoch) {
            py::gil_scoped_release no_gil;
            auto example = self.load(index, epoch);
            return std::make_pair(example.data, example.target);
          },
          py::arg("index"), py::arg("epoch") = 0)
      .def("describe", &MapDataset::describe)
      .def_property_readonly("map_file", [](const MapDataset& self) { return self.map_file().path; })
      .def_property_readonly("entries",
                             [](const MapDataset& self) {
                               py::list out;
                               for (const auto& e : self.map_file().entries) out.append(entry_tuple(e, false));
                               return out;
                             })
      .def_property_readonly("skipped_lines", [](const MapDataset& self) { return self.map_file().skipped; });

  py::class_<SegmentationMapDataset, std::shared_ptr<SegmentationMapDataset>>(d, "SegmentationMapDataset")
      .def(py::init([](const std::string& map_file, std::shared_ptr<SegmentationTransform> transform, uint64_t seed,
                       bool skip_bad_lines) {
             py::gil_scoped_release no_gil;
             return std::make_shared<SegmentationMapDataset>(
                 map_file, SegmentationMapDatasetOptions().transform(std::move(transform)).seed(seed).skip_bad_lines(
                               skip_bad_lines));
           }),
           py::arg("map_file"), py::arg("transform"), py::arg("seed"), py::arg("skip_bad_lines"))
      .def("__len__", [](const SegmentationMapDataset& self) { return *self.size(); })
      .def(
          "load",
          [](const SegmentationMapDataset& self, size_t index, uint64_t epoch) {
            py::gil_scoped_release no_gil;
            auto example = self.load(index, epoch);
            return std::make_pair(example.data, example.target);
          },
          py::arg("index"), py::arg("epoch") = 0)
      .def("describe", &SegmentationMapDataset::describe)
      .def_property_readonly("map_file", [](const SegmentationMapDataset& self) { return self.map_file().path; })
      .def_property_readonly("entries",
                             [](const SegmentationMapDataset& self) {
                               py::list out;
                               for (const auto& e : self.map_file().entries) out.append(entry_tuple(e, true));
                               return out;
                             })
      .def_property_readonly("skipped_lines", [](const SegmentationMapDataset& self) { return self.map_file().skipped; });

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
            return py::make_tuple(py::cast(batch->fields), py::cast(batch->skipped), py::cast(batch->indices));
          })
      .def("close", &LoaderEpoch::close, py::call_guard<py::gil_scoped_release>())
      .def("__len__", &LoaderEpoch::num_batches);

  py::class_<ThreadedLoader>(d, "ThreadedLoader")
      .def(py::init([](py::object dataset, int64_t batch_size, bool shuffle, int64_t num_workers, uint64_t seed,
                       bool drop_last, bool pin_memory, int64_t prefetch_factor, bool skip_errors, int64_t num_replicas,
                       int64_t rank) {
             auto options = LoaderOptions()
                                .batch_size(batch_size)
                                .shuffle(shuffle)
                                .num_workers(num_workers)
                                .seed(seed)
                                .drop_last(drop_last)
                                .pin_memory(pin_memory)
                                .prefetch_factor(prefetch_factor)
                                .skip_errors(skip_errors)
                                .num_replicas(num_replicas)
                                .rank(rank);
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
           py::arg("num_replicas") = 1, py::arg("rank") = 0)
      .def("__len__", &ThreadedLoader::num_batches)
      .def("epoch", &ThreadedLoader::epoch, py::arg("epoch"));
}

}  // namespace torchtl::bindings
