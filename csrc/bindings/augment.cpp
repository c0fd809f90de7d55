// The automatic augmentation policies, RandomErasing and their ops, and MixUp / CutMix, in torchtl._C.data.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include "bindings/bindings.h"
#include "data/auto_augment.h"
#include "data/mixup_cutmix.h"

namespace py = pybind11;

namespace torchtl::bindings {

void init_augment(py::module_& m) {
  using namespace torchtl::data;
  auto d = py::reinterpret_borrow<py::module_>(m.attr("data"));

  py::class_<AutoAugmentTransform, std::shared_ptr<AutoAugmentTransform>>(d, "AutoAugmentTransform")
      .def(
          "__call__",
          [](const AutoAugmentTransform& self, const torch::Tensor& image, const py::object& seed) {
            auto generator = seeded(unsigned_arg(seed, "seed"));
            py::gil_scoped_release no_gil;
            return self(image, generator);
          },
          py::arg("image"), py::arg("seed") = 0)
      .def("__repr__", &AutoAugmentTransform::repr);

  d.def(
      "trivial_augment_wide",
      [](int64_t num_magnitude_bins, const std::string& interpolation) {
        return std::make_shared<AutoAugmentTransform>(AutoAugmentTransform::trivial_augment_wide(
            TrivialAugmentWideOptions()
                .num_magnitude_bins(num_magnitude_bins)
                .interpolation(augment_interpolation(interpolation))));
      },
      py::arg("num_magnitude_bins"), py::arg("interpolation"));
  d.def(
      "rand_augment",
      [](int64_t num_ops, int64_t magnitude, int64_t num_magnitude_bins, const std::string& interpolation) {
        return std::make_shared<AutoAugmentTransform>(
            AutoAugmentTransform::rand_augment(RandAugmentOptions()
                                                   .num_ops(num_ops)
                                                   .magnitude(magnitude)
                                                   .num_magnitude_bins(num_magnitude_bins)
                                                   .interpolation(augment_interpolation(interpolation))));
      },
      py::arg("num_ops"), py::arg("magnitude"), py::arg("num_magnitude_bins"), py::arg("interpolation"));
  d.def(
      "auto_augment",
      [](const std::string& policy, const std::string& interpolation) {
        return std::make_shared<AutoAugmentTransform>(AutoAugmentTransform::auto_augment(
            AutoAugmentOptions().policy(policy).interpolation(augment_interpolation(interpolation))));
      },
      py::arg("policy"), py::arg("interpolation"));
  d.def(
      "aug_mix",
      [](int64_t severity, int64_t mixture_width, int64_t chain_depth, double alpha, bool all_ops,
         const std::string& interpolation) {
        return std::make_shared<AutoAugmentTransform>(
            AutoAugmentTransform::aug_mix(AugMixOptions()
                                              .severity(severity)
                                              .mixture_width(mixture_width)
                                              .chain_depth(chain_depth)
                                              .alpha(alpha)
                                              .all_ops(all_ops)
                                              .interpolation(augment_interpolation(interpolation))));
      },
      py::arg("severity"), py::arg("mixture_width"), py::arg("chain_depth"), py::arg("alpha"), py::arg("all_ops"),
      py::arg("interpolation"));
  d.def(
      "augment_op",
      [](const torch::Tensor& image, const std::string& op, double magnitude, const std::string& interpolation) {
        return apply_augment_op(image, data::augment_op(op), magnitude, augment_interpolation(interpolation));
      },
      py::arg("image"), py::arg("op"), py::arg("magnitude"), py::arg("interpolation") = "nearest",
      "One op of v2's augmentation spaces by its v2 name, as _apply_image_or_video_transform applies it.");

  py::class_<RandomErasing, std::shared_ptr<RandomErasing>>(d, "RandomErasing")
      .def(py::init([](double p, std::array<double, 2> scale, std::array<double, 2> ratio, std::vector<double> value) {
             return std::make_shared<RandomErasing>(
                 RandomErasingOptions().p(p).scale(scale).ratio(ratio).value(std::move(value)));
           }),
           py::arg("p"), py::arg("scale"), py::arg("ratio"), py::arg("value"))
      .def(
          "__call__",
          [](const RandomErasing& self, const torch::Tensor& image, const py::object& seed) {
            auto generator = seeded(unsigned_arg(seed, "seed"));
            py::gil_scoped_release no_gil;
            return self(image, generator);
          },
          py::arg("image"), py::arg("seed") = 0)
      .def("__repr__", &RandomErasing::repr);

  d.def(
      "mixup",
      [](const torch::Tensor& images, const torch::Tensor& labels, double alpha, std::optional<int64_t> num_classes,
         const py::object& seed) {
        auto generator = seeded(unsigned_arg(seed, "seed"));
        py::gil_scoped_release no_gil;
        return mixup(images, labels, alpha, num_classes, generator);
      },
      py::arg("images"), py::arg("labels"), py::arg("alpha"), py::arg("num_classes"), py::arg("seed"));
  d.def(
      "cutmix",
      [](const torch::Tensor& images, const torch::Tensor& labels, double alpha, std::optional<int64_t> num_classes,
         const py::object& seed) {
        auto generator = seeded(unsigned_arg(seed, "seed"));
        py::gil_scoped_release no_gil;
        return cutmix(images, labels, alpha, num_classes, generator);
      },
      py::arg("images"), py::arg("labels"), py::arg("alpha"), py::arg("num_classes"), py::arg("seed"));

  py::class_<MixUpCutMix, std::shared_ptr<MixUpCutMix>>(d, "MixUpCutMix")
      .def(py::init([](double mixup_alpha, double cutmix_alpha, std::optional<int64_t> num_classes) {
             return std::make_shared<MixUpCutMix>(
                 MixUpCutMixOptions().mixup_alpha(mixup_alpha).cutmix_alpha(cutmix_alpha).num_classes(num_classes));
           }),
           py::arg("mixup_alpha"), py::arg("cutmix_alpha"), py::arg("num_classes"))
      .def(
          "__call__",
          [](const MixUpCutMix& self, const torch::Tensor& images, const torch::Tensor& labels,
             const py::object& seed) {
            auto generator = seeded(unsigned_arg(seed, "seed"));
            py::gil_scoped_release no_gil;
            return self(images, labels, generator);
          },
          py::arg("images"), py::arg("labels"), py::arg("seed") = 0)
      .def_property_readonly("enabled", &MixUpCutMix::enabled)
      .def("__repr__", &MixUpCutMix::repr);
}

}  // namespace torchtl::bindings
