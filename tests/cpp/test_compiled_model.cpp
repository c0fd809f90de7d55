// A package torchtl.export wrote in Python (python_package.py), run from C++ through
// AOTIModelPackageLoader: the same outputs as torchtl's Python-side model, any batch size, the
// metadata the package carries, and named errors. The directory comes from TORCHTL_PYTHON_PACKAGE,
// which ctest sets when CMake was given TORCHTL_TEST_PYTHON; without it the suite is skipped.
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <map>

#include "harness.h"
#include "io/weights.h"
#include "predict/compiled_model.h"
#include "predict/predictor.h"

using torchtl::testing::contains;
using torchtl::predict::CompiledModel;

namespace {

std::string python_package(const std::string& name) {
  const char* dir = std::getenv("TORCHTL_PYTHON_PACKAGE");
  if (!dir || !*dir) {
    SKIP("TORCHTL_PYTHON_PACKAGE is not set; configure with -DTORCHTL_TEST_PYTHON=<python with torch and "
         "torchtl> (make cpp-test does) so ctest writes the package first");
  }
  return (std::filesystem::path(dir) / name).string();
}

std::map<std::string, torch::Tensor> expected() {
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, tensor] : torchtl::io::read_weights(python_package("expected.pt"))) out[name] = tensor;
  return out;
}

}  // namespace

TORCHTL_TEST(package_reproduces_python_at_any_batch_size) {
  CompiledModel model(python_package("resnet18.pt2"));
  EXPECT(model.device().is_cpu() && model.task() == "classification" && model.precision() == "float32");
  EXPECT(model.input_size() == std::vector<int64_t>({64, 64}) && model.dynamic_batch());
  auto e = expected();
  torch::NoGradGuard no_grad;
  for (const char* suffix : {"", "1"}) {
    const auto got = model.forward(e[std::string("input") + suffix]);
    const auto& want = e[std::string("output") + suffix];
    EXPECT(got.sizes() == want.sizes()) << got.sizes() << " vs " << want.sizes();
    EXPECT(torch::allclose(got, want, 1e-4, 1e-5))
        << "batch " << want.size(0) << ": max abs difference " << (got - want).abs().max().item<double>();
  }
}

TORCHTL_TEST(package_carries_the_model_record) {
  CompiledModel model(python_package("resnet18.pt2"));
  const auto& record = model.model_record();
  EXPECT(contains(record, "\"builder\": \"resnet18\"")) << record;
  EXPECT(contains(record, "\"circle\"") && contains(record, "\"crop_size\": 64")) << record;
}

TORCHTL_TEST(predictor_runs_a_package_as_it_runs_the_model_file) {
  const auto image = python_package("image.png");
  const torchtl::Predictor from_file(python_package("resnet18.pt"), torch::Device(torch::kCPU));
  const torchtl::Predictor from_package(python_package("resnet18.pt2"));
  EXPECT(from_package.device().is_cpu() && from_package.task() == "classification");
  EXPECT(from_package.metadata().label(1) == "square");
  const auto a = from_file.classify({image}, 3)[0];
  const auto b = from_package.classify({image}, 3)[0];
  EXPECT(a.size() == 3 && b.size() == 3);
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    EXPECT(a[i].label == b[i].label) << i << ": " << a[i].label << " vs " << b[i].label;
    EXPECT(std::abs(a[i].probability - b[i].probability) < 1e-5) << a[i].probability << " vs " << b[i].probability;
  }
}

TORCHTL_TEST(package_errors_name_the_file_and_the_gap) {
  const auto path = python_package("resnet18.pt2");
  CompiledModel model(path);
  auto message = THROWN_MESSAGE(model.forward(torch::randn({1, 3, 32, 32})));
  EXPECT(contains(message, "resnet18.pt2' takes 64 x 64 images (the size it was exported for), got 32 x 32")) << message;
  message = THROWN_MESSAGE(model.forward(torch::randn({1, 1, 64, 64})));
  EXPECT(contains(message, "takes a N x 3 x H x W batch")) << message;
  message = THROWN_MESSAGE(CompiledModel(path, torch::Device(torch::kCUDA, 0)));
  EXPECT(contains(message, "was compiled for the CPU and runs there")) << message;
  message = THROWN_MESSAGE(CompiledModel(path + ".missing"));
  EXPECT(contains(message, "package not found: '" + path + ".missing'")) << message;
  // A PyTorch archive that is no package: the expected outputs, a torch.save file.
  message = THROWN_MESSAGE(CompiledModel(python_package("expected.pt")));
  EXPECT(contains(message, "expected.pt' is no AOTInductor package: Failed to find wrapper metadata")) << message;
}
