// The C++ ResNet family: shapes at the tests' small size, torchvision's state_dict names, and the
// head surgery that transfer learning does (reset_classifier, replace_child).
#include <torch/torch.h>

#include "harness.h"
#include "io/weights.h"
#include "models/resnet.h"

using torchtl::testing::contains;
namespace models = torchtl::models;

namespace {

// 64 px, batch 2: the tests' standard small input (a 224 px ResNet-50 forward is seconds here).
torch::Tensor small_batch() {
  return torch::randn({2, 3, 64, 64});
}

std::vector<std::string> keys_of(const torch::nn::Module& module) {
  std::vector<std::string> keys;
  for (const auto& entry : torchtl::io::state_dict(module)) keys.push_back(entry.first);
  return keys;
}

}  // namespace

TORCHTL_TEST(resnet18_output_shape) {
  torch::manual_seed(0);
  models::ResNet model(models::resnet_options("resnet18"));
  model->eval();
  torch::NoGradGuard no_grad;
  const auto out = model(small_batch());
  EXPECT(out.sizes() == torch::IntArrayRef({2, 1000})) << "got " << out.sizes();
  EXPECT(model->num_features() == 512) << "got " << model->num_features();
  EXPECT(torch::isfinite(out).all().item<bool>());
}

TORCHTL_TEST(resnet50_output_shape_with_num_classes) {
  torch::manual_seed(0);
  models::ResNet model(models::resnet_options("resnet50").num_classes(10));
  model->eval();
  torch::NoGradGuard no_grad;
  const auto out = model(small_batch());
  EXPECT(out.sizes() == torch::IntArrayRef({2, 10})) << "got " << out.sizes();
  EXPECT(model->num_features() == 2048) << "got " << model->num_features();
}

// torchvision's resnet18 / resnet50 state_dict(): 122 / 320 entries, in this order at the ends.
TORCHTL_TEST(state_dict_keys_follow_torchvision) {
  const std::vector<std::string> head = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                         "bn1.running_var", "bn1.num_batches_tracked", "layer1.0.conv1.weight"};
  for (const auto& [arch, count] : std::vector<std::pair<std::string, size_t>>{{"resnet18", 122}, {"resnet50", 320}}) {
    models::ResNet model(models::resnet_options(arch));
    const auto keys = keys_of(*model);
    EXPECT(keys.size() == count) << arch << ": " << keys.size() << " keys";
    EXPECT(std::vector<std::string>(keys.begin(), keys.begin() + head.size()) == head) << arch;
    EXPECT(keys[keys.size() - 2] == "fc.weight" && keys.back() == "fc.bias") << arch;
  }
  models::ResNet resnet50(models::resnet_options("resnet50"));
  const auto keys = keys_of(*resnet50);
  EXPECT(std::find(keys.begin(), keys.end(), "layer1.0.downsample.1.running_var") != keys.end());
  EXPECT(std::find(keys.begin(), keys.end(), "layer4.2.bn3.weight") != keys.end());
}

TORCHTL_TEST(unknown_architecture_lists_known_ones) {
  const auto message = THROWN_MESSAGE(models::resnet_options("resnet19"));
  EXPECT(contains(message, "unknown ResNet architecture 'resnet19'")) << message;
  EXPECT(contains(message, "resnet18") && contains(message, "wide_resnet101_2")) << message;
}

TORCHTL_TEST(wrong_input_shape_is_named) {
  models::ResNet model(models::resnet_options("resnet18"));
  const auto message = THROWN_MESSAGE(model(torch::randn({3, 64, 64})));
  EXPECT(contains(message, "ResNet expects an N x 3 x H x W batch, got shape [3, 64, 64]")) << message;
}

TORCHTL_TEST(reset_classifier_replaces_the_head) {
  for (const auto& arch : {"resnet18", "resnet50"}) {
    models::ResNet model(models::resnet_options(arch));
    const auto old_conv1 = model->conv1->weight;
    model->reset_classifier(7);
    EXPECT(model->fc->weight.sizes() == torch::IntArrayRef({7, model->num_features()})) << arch;
    EXPECT(model->options.num_classes() == 7) << arch;
    // The registered child is the new head too, so state_dict() and parameters() see it.
    const auto weights = torchtl::io::state_dict(*model);
    EXPECT(weights.back().first == "fc.bias" && weights.back().second.size(0) == 7) << arch;
    EXPECT(model->conv1->weight.is_same(old_conv1)) << arch << ": the backbone must be kept";
    model->eval();
    torch::NoGradGuard no_grad;
    EXPECT(model(small_batch()).sizes() == torch::IntArrayRef({2, 7})) << arch;
  }
  models::ResNet model(models::resnet_options("resnet18"));
  const auto message = THROWN_MESSAGE(model->reset_classifier(0));
  EXPECT(contains(message, "num_classes must be positive, got 0")) << message;
}

TORCHTL_TEST(replace_child_swaps_the_head_for_any_module) {
  models::ResNet model(models::resnet_options("resnet18"));
  model->eval();
  torch::NoGradGuard no_grad;

  // torchvision users write model.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 3)).
  torch::nn::Sequential head(torch::nn::Dropout(0.2), torch::nn::Linear(512, 3));
  model->replace_child("fc", head.ptr());
  EXPECT(model(small_batch()).sizes() == torch::IntArrayRef({2, 3}));
  const auto keys = keys_of(*model);
  EXPECT(keys.back() == "fc.1.bias") << "got " << keys.back();

  // model.fc = nn.Identity(): the pooled features themselves.
  model->replace_child("fc", torch::nn::Identity().ptr());
  EXPECT(model(small_batch()).sizes() == torch::IntArrayRef({2, 512}));

  // And back to a Linear, which the typed member sees again.
  model->replace_child("fc", torch::nn::Linear(512, 4).ptr());
  EXPECT(!model->fc.is_empty() && model->fc->weight.size(0) == 4);
  EXPECT(model(small_batch()).sizes() == torch::IntArrayRef({2, 4}));
}

TORCHTL_TEST(replace_child_rejects_what_cannot_stand_there) {
  models::ResNet model(models::resnet_options("resnet18"));
  auto message = THROWN_MESSAGE(model->replace_child("layer1", torch::nn::Linear(2, 2).ptr()));
  EXPECT(contains(message, "cannot set layer1")) << message;
  message = THROWN_MESSAGE(model->replace_child("layer9", torch::nn::Identity().ptr()));
  EXPECT(contains(message, "ResNet has no child 'layer9'")) << message;

  // A block's own children follow the same rule, through the generic helper.
  auto block = model->layer1[0];
  models::replace_child(*block, "bn1", torch::nn::BatchNorm2d(64).ptr());
  message = THROWN_MESSAGE(models::replace_child(*block, "bn1", torch::nn::Linear(2, 2).ptr()));
  EXPECT(contains(message, "cannot set bn1")) << message;

  // Sequential children are addressed by index, as in Python's model.layer1[1] = ...
  models::replace_child(*model->layer1, "1", torch::nn::Identity().ptr());
  EXPECT(model->layer1[1]->as<torch::nn::Identity>() != nullptr) << model->layer1[1]->name();
  model->eval();
  torch::NoGradGuard no_grad;
  EXPECT(model(small_batch()).sizes() == torch::IntArrayRef({2, 1000}));
  message = THROWN_MESSAGE(models::replace_child(*model->layer1, "5", torch::nn::Identity().ptr()));
  EXPECT(contains(message, "index 5 is out of range")) << message;
}
