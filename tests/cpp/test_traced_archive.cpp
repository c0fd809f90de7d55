// Weights crossing between Python and C++: torchvision's resnet18 as a traced archive (the
// format LibTorch programs load) and as a torch.save'd state dict, written by python_weights.py;
// and C++ weights that python_weights.py then opens in torchvision. The directory comes from TORCHTL_PYTHON_WEIGHTS,
// which ctest sets when CMake was given TORCHTL_TEST_PYTHON; without it the suite is skipped.
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "harness.h"
#include "io/weights.h"
#include "models/resnet.h"

using torchtl::testing::contains;
namespace io = torchtl::io;
namespace models = torchtl::models;

namespace {

std::string python_weights(const std::string& name) {
  const char* dir = std::getenv("TORCHTL_PYTHON_WEIGHTS");
  if (!dir || !*dir) {
    SKIP("TORCHTL_PYTHON_WEIGHTS is not set; configure with -DTORCHTL_TEST_PYTHON=<python with torch and "
         "torchvision> (make cpp-test does) so ctest writes the archives first");
  }
  return (std::filesystem::path(dir) / name).string();
}

// The traced torchvision model's own output: the reference the C++ model must reproduce.
torch::Tensor traced_output(const std::string& path, const torch::Tensor& x) {
  auto traced = torch::jit::load(path);
  traced.eval();
  return traced.forward({x}).toTensor();
}

void write_tensor(const torch::Tensor& tensor, const std::string& path) {
  const auto bytes = torch::pickle_save(tensor);
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  TORCH_CHECK(out.good(), "cannot write '", path, "'");
}

}  // namespace

TORCHTL_TEST(traced_archive_reproduces_torchvision) {
  const auto archive = python_weights("resnet18_traced.pt");
  models::ResNet model(models::resnet_options("resnet18"));
  const auto result = io::load_weights(*model, archive);
  EXPECT(result.missing_keys.empty() && result.unexpected_keys.empty());
  model->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 3, 64, 64});
  const auto expected = traced_output(archive, x);
  const auto got = model(x);
  EXPECT(torch::allclose(got, expected, 1e-4, 1e-5)) << "max abs difference " << (got - expected).abs().max().item<double>();
}

TORCHTL_TEST(python_state_dict_reproduces_torchvision) {
  models::ResNet model(models::resnet_options("resnet18"));
  io::load_weights(*model, python_weights("resnet18_state_dict.pt"));
  model->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 3, 64, 64});
  const auto expected = traced_output(python_weights("resnet18_traced.pt"), x);
  EXPECT(torch::allclose(model(x), expected, 1e-4, 1e-5));
}

// A checkpoint dict from a Python training script: the weights are found under "model", and the
// optimizer state and other entries around them are read without complaint.
TORCHTL_TEST(python_checkpoint_yields_its_model) {
  const auto checkpoint = io::read_weights(python_weights("resnet18_checkpoint.pt"));
  const auto state_dict = io::read_weights(python_weights("resnet18_state_dict.pt"));
  EXPECT(checkpoint.size() == 122 && state_dict.size() == 122) << checkpoint.size() << ", " << state_dict.size();
  // The checkpoint was taken after one optimiser step, so its weights differ; its buffers and
  // names, in order, do not.
  for (size_t i = 0; i < std::min(checkpoint.size(), state_dict.size()); ++i) {
    EXPECT(checkpoint[i].first == state_dict[i].first) << i << ": " << checkpoint[i].first;
  }
  EXPECT(torch::equal(checkpoint[3].second, state_dict[3].second)) << checkpoint[3].first;
  EXPECT(!torch::equal(checkpoint[0].second, state_dict[0].second)) << checkpoint[0].first;
}

TORCHTL_TEST(traced_archive_mismatch_names_keys) {
  const auto archive = python_weights("resnet18_traced.pt");
  models::ResNet resnet50(models::resnet_options("resnet50"));
  auto message = THROWN_MESSAGE(io::load_weights(*resnet50, archive));
  EXPECT(contains(message, "missing keys: layer1.0.conv3.weight,")) << message;
  EXPECT(contains(message, "layer1.0.conv1.weight (weights [64, 64, 3, 3], model [64, 64, 1, 1])")) << message;

  models::ResNet two_classes(models::resnet_options("resnet18").num_classes(2));
  message = THROWN_MESSAGE(io::load_weights(*two_classes, archive));
  EXPECT(contains(message, "fc.weight (weights [1000, 512], model [2, 512])")) << message;
}

// The usual transfer-learning start: torchvision's weights in, then a new head.
TORCHTL_TEST(traced_archive_then_new_head) {
  const auto archive = python_weights("resnet18_traced.pt");
  models::ResNet model(models::resnet_options("resnet18"));
  io::load_weights(*model, archive);
  model->reset_classifier(2);
  const auto archived = io::read_weights(archive);
  EXPECT(archived.front().first == "conv1.weight" && torch::equal(model->conv1->weight, archived.front().second));
  model->eval();
  torch::NoGradGuard no_grad;
  EXPECT(model(torch::randn({2, 3, 64, 64})).sizes() == torch::IntArrayRef({2, 2}));
}

// Writes what `python_weights.py check` opens in torchvision: C++ weights, an input, and the C++
// output for it.
TORCHTL_TEST(writes_weights_for_torchvision) {
  const auto weights = python_weights("cpp_resnet18.pt");
  torch::manual_seed(7);
  models::ResNet model(models::resnet_options("resnet18").num_classes(3));
  model->train();
  model(torch::randn({4, 3, 64, 64}));  // running statistics away from their defaults
  model->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 3, 64, 64});
  io::save_weights(*model, weights);
  write_tensor(x, python_weights("cpp_input.pt"));
  write_tensor(model(x), python_weights("cpp_output.pt"));
}
