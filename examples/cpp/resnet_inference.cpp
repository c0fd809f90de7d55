// Loads a ResNet from Python-written weights (a traced archive, as LibTorch programs load, or a
// torch.save'd state dict or checkpoint) into torchtl's C++ ResNet and prints each image's top classes.
//
//   resnet_inference --weights resnet18_traced.pt
//   resnet_inference --weights best.pt --model resnet50 --input batch.pt --topk 3
//
// --input is a torch.save'd float tensor, C x H x W or N x C x H x W, already normalised the way
// the model was trained (torchvision: ImageNet mean/std). Without it a random batch is used,
// which checks that the weights load and run.
#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <string>

#include "cli.h"
#include "io/weights.h"
#include "models/resnet.h"

namespace examples = torchtl::examples;

namespace {

struct Args {
  std::string weights, model = "resnet18", input, device;
  int64_t num_classes = 0, size = 224, batch_size = 1, topk = 5, seed = 0;
};

torch::Device pick_device(const std::string& name) {
  if (name.empty()) return torch::cuda::is_available() ? torch::kCUDA : torch::kCPU;
  torch::Device device(name);  // throws, naming the string, for what it cannot parse
  TORCH_CHECK(!device.is_cuda() || torch::cuda::is_available(), "--device ", name,
              " requested, but this libtorch sees no CUDA device");
  return device;
}

torch::Tensor read_input(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "cannot open input '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto value = torch::pickle_load(bytes);
  TORCH_CHECK_VALUE(value.isTensor(), "'", path, "' holds a ", value.tagKind(), ", not a tensor");
  auto x = value.toTensor();
  if (x.dim() == 3) x = x.unsqueeze(0);
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == 3 && x.is_floating_point(), "'", path,
                    "' must hold a float tensor shaped 3 x H x W or N x 3 x H x W, got ", x.scalar_type(), " ",
                    x.sizes());
  return x.to(torch::kFloat);
}

// The head's width as saved, so a fine-tuned model loads without being told its class count.
int64_t classes_in(const torchtl::io::StateDict& weights) {
  for (const auto& [name, tensor] : weights) {
    if (name == "fc.weight" && tensor.dim() == 2) return tensor.size(0);
  }
  TORCH_CHECK_VALUE(false, "the weights have no fc.weight to take the number of classes from; pass --num-classes");
}

int run(const Args& args) {
  const auto device = pick_device(args.device);
  const auto weights = torchtl::io::read_weights(args.weights);
  const int64_t classes = args.num_classes ? args.num_classes : classes_in(weights);

  torchtl::models::ResNet model(torchtl::models::resnet_options(args.model).num_classes(classes));
  torchtl::io::load_state_dict(*model, weights);
  model->to(device);
  model->eval();

  torch::manual_seed(static_cast<uint64_t>(args.seed));
  const auto x = args.input.empty() ? torch::randn({args.batch_size, 3, args.size, args.size}) : read_input(args.input);
  torch::NoGradGuard no_grad;
  const auto probabilities = torch::softmax(model(x.to(device)), 1).cpu();
  const auto [top, index] = probabilities.topk(std::min(args.topk, classes), 1);

  std::cout << args.model << " (" << classes << " classes) from " << args.weights << " on " << device << ", input "
            << x.sizes() << "\n";
  for (int64_t n = 0; n < top.size(0); ++n) {
    std::cout << "image " << n << ":";
    for (int64_t k = 0; k < top.size(1); ++k) {
      std::cout << "  class " << index[n][k].item<int64_t>() << " " << std::fixed << std::setprecision(4)
                << top[n][k].item<float>();
    }
    std::cout << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  // The names and defaults of the `torchtl` command (tests/cpp/cli_defaults.py checks them).
  examples::Options options("resnet_inference --weights PATH [--model NAME] [--input TENSOR.pt] [options]",
                            "Loads Python-written weights into torchtl's C++ ResNet and prints each image's top classes.");
  options.text("--weights", &args.weights,
               "traced/scripted archive (torch.jit.save) or torch.save'd state dict / checkpoint (required)");
  options.text("--model,--arch", &args.model, "resnet18, resnet34, resnet50, resnet101, resnet152, resnext*, wide_resnet*");
  options.integer("--num-classes,--classes", &args.num_classes, 1,
                  "number of classes of the head (default: the rows of fc.weight in the weights)", /*show_default=*/false);
  options.text("--input", &args.input, "torch.save'd float tensor, C x H x W or N x C x H x W (default: random)");
  options.integer("--size", &args.size, 16, "side of the random input");
  options.integer("-b,--batch-size,--batch", &args.batch_size, 1, "batch size of the random input");
  options.integer("--topk", &args.topk, 1, "classes printed per image (at most all)");
  options.integer("--seed", &args.seed, 0, "seed of the random input");
  options.text("--device", &args.device, "cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)");
  const auto check = [&] {
    if (args.weights.empty()) throw examples::UsageError("--weights is required");
  };
  return examples::main_of("resnet_inference", options, argc, argv, check, [&] { return run(args); });
}
