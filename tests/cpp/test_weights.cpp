// Weights in and out from C++ alone: state dicts written by save_weights, checkpoints, and the one
// error that names every missing, unexpected and wrongly shaped key. (Archives written by Python
// are covered by test_traced_archive.cpp.)
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "harness.h"
#include "io/pretrained.h"
#include "io/weights.h"
#include "models/resnet.h"

using torchtl::testing::contains;
using torchtl::testing::scratch_path;
namespace io = torchtl::io;
namespace models = torchtl::models;

namespace {

models::ResNet resnet(const std::string& arch, uint64_t seed) {
  torch::manual_seed(seed);
  return models::ResNet(models::resnet_options(arch));
}

bool same_weights(const io::StateDict& a, const io::StateDict& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].first != b[i].first || !torch::equal(a[i].second, b[i].second)) return false;
  }
  return true;
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TORCHTL_TEST(loads_what_it_saves) {
  auto source = resnet("resnet18", 1);
  // Non-default running statistics and counters, so buffers are checked as well as parameters.
  source->train();
  source(torch::randn({2, 3, 64, 64}));
  const auto path = scratch_path("resnet18.pt");
  io::save_weights(*source, path);
  EXPECT(!std::filesystem::exists(path + ".tmp")) << "the temporary file must be renamed away";

  auto target = resnet("resnet18", 2);
  EXPECT(!same_weights(io::state_dict(*source), io::state_dict(*target)));
  const auto result = io::load_weights(*target, path);
  EXPECT(result.missing_keys.empty() && result.unexpected_keys.empty());
  EXPECT(same_weights(io::state_dict(*source), io::state_dict(*target)));
  EXPECT(target->bn1.ptr()->as<torch::nn::BatchNorm2d>()->num_batches_tracked.item<int64_t>() == 1);

  source->eval();
  target->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 3, 64, 64});
  EXPECT(torch::equal(source(x), target(x)));
}

TORCHTL_TEST(read_weights_keeps_state_dict_order) {
  auto model = resnet("resnet50", 0);
  const auto path = scratch_path("resnet50.pt");
  io::save_weights(*model, path);
  const auto read = io::read_weights(path);
  EXPECT(same_weights(read, io::state_dict(*model))) << "read back " << read.size() << " entries";
}

// A checkpoint written from DistributedDataParallel prefixes every key with "module.", which
// read_weights drops, as Python's torchtl.load_weights does.
TORCHTL_TEST(read_weights_drops_data_parallel_prefix) {
  auto model = resnet("resnet18", 0);
  io::StateDict prefixed;
  for (const auto& [name, tensor] : io::state_dict(*model)) prefixed.emplace_back("module." + name, tensor);
  const auto path = scratch_path("resnet18_ddp.pt");
  io::save_state_dict(prefixed, path);
  EXPECT(same_weights(io::read_weights(path), io::state_dict(*model)));
  auto target = resnet("resnet18", 1);
  io::load_weights(*target, path);
  EXPECT(same_weights(io::state_dict(*target), io::state_dict(*model)));
}

// Another class count: the head keeps its fresh initialisation, everything else loads.
TORCHTL_TEST(load_pretrained_reinitialises_a_head_of_another_class_count) {
  auto source = resnet("resnet18", 0);
  const auto weights = io::state_dict(*source);
  EXPECT(io::head_num_classes(weights, "fc.weight") == 1000);
  EXPECT(!io::head_num_classes(weights, "classifier.4.weight").has_value());
  torch::manual_seed(1);
  models::ResNet target(models::resnet_options("resnet18").num_classes(3));
  const auto fresh_fc = target->fc->weight.clone();
  const auto result = io::load_pretrained(*target, weights, {"fc."});
  EXPECT(result.reinitialised == std::vector<std::string>({"fc.weight", "fc.bias"}));
  EXPECT(torch::equal(target->fc->weight, fresh_fc));
  EXPECT(torch::equal(target->conv1->weight, source->conv1->weight));
}

TORCHTL_TEST(mismatch_error_names_every_bad_key) {
  auto source = resnet("resnet18", 1);
  auto weights = io::state_dict(*source);
  weights.erase(std::find_if(weights.begin(), weights.end(), [](const auto& e) { return e.first == "layer4.1.bn2.running_var"; }));
  weights.emplace_back("extra.weight", torch::zeros({2}));
  for (auto& [name, tensor] : weights) {
    if (name == "fc.bias") tensor = torch::zeros({3});
  }

  auto target = resnet("resnet18", 2);
  const auto before = target->conv1->weight.clone();
  const auto message = THROWN_MESSAGE(io::load_state_dict(*target, weights));
  EXPECT(contains(message, "Error(s) in loading weights into")) << message;
  EXPECT(contains(message, "1 missing key: layer4.1.bn2.running_var")) << message;
  EXPECT(contains(message, "1 unexpected key: extra.weight")) << message;
  EXPECT(contains(message, "1 wrongly shaped key: fc.bias (weights [3], model [1000])")) << message;
  // All or nothing: a failed load leaves the model as it was.
  EXPECT(torch::equal(target->conv1->weight, before)) << "a failed load must not copy anything";
}

TORCHTL_TEST(mismatch_between_architectures) {
  const auto path = scratch_path("resnet18.pt");
  io::save_weights(*resnet("resnet18", 1), path);

  // resnet34 has every resnet18 key plus 96 more (its extra blocks).
  auto resnet34 = resnet("resnet34", 0);
  auto message = THROWN_MESSAGE(io::load_weights(*resnet34, path));
  EXPECT(contains(message, "96 missing keys: layer1.2.conv1.weight,")) << message;
  EXPECT(!contains(message, "unexpected")) << message;

  // A resnet18 with another head: the head's two tensors, with both shapes.
  models::ResNet ten_classes(models::resnet_options("resnet18").num_classes(10));
  message = THROWN_MESSAGE(io::load_weights(*ten_classes, path));
  EXPECT(contains(message, "2 wrongly shaped keys: fc.weight (weights [1000, 512], model [10, 512]), "
                           "fc.bias (weights [1000], model [10])"))
      << message;
}

TORCHTL_TEST(non_strict_load_reports_instead_of_throwing) {
  const auto path = scratch_path("resnet18.pt");
  auto source = resnet("resnet18", 1);
  io::save_weights(*source, path);

  auto resnet34 = resnet("resnet34", 0);
  const auto result = io::load_weights(*resnet34, path, /*strict=*/false);
  EXPECT(result.missing_keys.size() == 96) << result.missing_keys.size();
  EXPECT(result.unexpected_keys.empty());
  EXPECT(torch::equal(resnet34->conv1->weight, source->conv1->weight)) << "present keys must be loaded";

  // Wrong shapes can never be loaded, strict or not.
  models::ResNet ten_classes(models::resnet_options("resnet18").num_classes(10));
  const auto message = THROWN_MESSAGE(io::load_weights(*ten_classes, path, /*strict=*/false));
  EXPECT(contains(message, "wrongly shaped")) << message;
}

TORCHTL_TEST(loading_converts_dtype) {
  auto source = resnet("resnet18", 1);
  auto weights = io::state_dict(*source);
  for (auto& entry : weights) {
    if (entry.second.is_floating_point()) entry.second = entry.second.to(torch::kDouble);
  }
  auto target = resnet("resnet18", 2);
  io::load_state_dict(*target, weights);
  EXPECT(target->conv1->weight.scalar_type() == torch::kFloat);
  EXPECT(torch::equal(target->conv1->weight, source->conv1->weight));
}

TORCHTL_TEST(reads_checkpoints_holding_a_state_dict) {
  auto model = resnet("resnet18", 1);
  c10::Dict<std::string, torch::Tensor> tensors;
  for (const auto& [name, tensor] : io::state_dict(*model)) tensors.insert(name, tensor);
  for (const char* key : {"model", "state_dict"}) {
    // What a training script saves: {"epoch": 3, "model": model.state_dict(), ...}.
    c10::impl::GenericDict checkpoint(c10::StringType::get(), c10::AnyType::get());
    checkpoint.insert("epoch", int64_t{3});
    checkpoint.insert(key, tensors);
    const auto path = scratch_path(std::string("checkpoint_") + key + ".pt");
    write_bytes(path, torch::pickle_save(c10::IValue(checkpoint)));
    EXPECT(same_weights(io::read_weights(path), io::state_dict(*model))) << key;
  }
}

TORCHTL_TEST(unreadable_files_are_named) {
  auto model = resnet("resnet18", 0);
  const auto missing = scratch_path("no_such_file.pt");
  auto message = THROWN_MESSAGE(io::load_weights(*model, missing));
  EXPECT(contains(message, "cannot open weights file '" + missing + "'")) << message;

  const auto garbage = scratch_path("garbage.pt");
  write_bytes(garbage, {'n', 'o', 't', ' ', 'a', ' ', 'z', 'i', 'p'});
  message = THROWN_MESSAGE(io::load_weights(*model, garbage));
  EXPECT(contains(message, "'" + garbage + "' is not a PyTorch archive")) << message;

  const auto not_a_dict = scratch_path("tensor.pt");
  write_bytes(not_a_dict, torch::pickle_save(c10::IValue(torch::ones({2}))));
  message = THROWN_MESSAGE(io::load_weights(*model, not_a_dict));
  EXPECT(contains(message, "not a state dict")) << message;

  c10::impl::GenericDict other(c10::StringType::get(), c10::AnyType::get());
  other.insert("epoch", int64_t{3});
  const auto no_weights = scratch_path("no_weights.pt");
  write_bytes(no_weights, torch::pickle_save(c10::IValue(other)));
  message = THROWN_MESSAGE(io::load_weights(*model, no_weights));
  EXPECT(contains(message, "neither a state dict")) << message;
}
