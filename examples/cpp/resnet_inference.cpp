// Loads a ResNet from Python-written weights (a traced archive as the seeds use, or a torch.save'd
// state dict or checkpoint) into torchtl's C++ ResNet and prints each image's top classes.
//
//   resnet_inference --weights resnet18_traced.pt
//   resnet_inference --weights best.pt --arch resnet50 --input batch.pt --topk 3
//
// --input is a torch.save'd float tensor, C x H x W or N x C x H x W, already normalised the way
// the model was trained (torchvision: ImageNet mean/std). Without it a random batch is used,
// which checks that the weights load and run.
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <map>
#include <string>

#include "io/weights.h"
#include "models/resnet.h"

namespace {

const char* const kUsage =
    "usage: resnet_inference --weights PATH [--arch NAME] [--classes N] [--input TENSOR.pt]\n"
    "                        [--size PIXELS] [--batch N] [--topk K] [--seed S] [--device cpu|cuda]\n"
    "  --weights  traced/scripted archive (torch.jit.save) or torch.save'd state dict / checkpoint\n"
    "  --arch     resnet18 (default), resnet34, resnet50, resnet101, resnet152, resnext*, wide_resnet*\n"
    "  --classes  number of classes of the head (default: the rows of fc.weight in the weights)\n"
    "  --input    torch.save'd float tensor, C x H x W or N x C x H x W (default: random)\n"
    "  --size     side of the random input (default 224); --batch its batch size (default 1)\n"
    "  --topk     classes printed per image (default 5); --seed for the random input (default 0)\n"
    "  --device   default: cuda when available, else cpu\n";

struct Args {
  std::string weights, arch = "resnet18", input, device;
  int64_t classes = 0, size = 224, batch = 1, topk = 5, seed = 0;
};

// Usage problems: reported with the usage text and exit status 2, unlike run-time failures.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int64_t parse_int(const std::string& option, const std::string& text, int64_t minimum) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || value < minimum) {
    throw UsageError(option + " expects an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
  }
  return value;
}

Args parse(int argc, char** argv) {
  Args args;
  std::map<std::string, std::string*> text{{"--weights", &args.weights}, {"--arch", &args.arch},
                                           {"--input", &args.input},     {"--device", &args.device}};
  std::map<std::string, int64_t*> numbers{{"--classes", &args.classes}, {"--size", &args.size},
                                          {"--batch", &args.batch},     {"--topk", &args.topk},
                                          {"--seed", &args.seed}};
  for (int i = 1; i < argc; ++i) {
    const std::string option = argv[i];
    if (option == "-h" || option == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (!text.count(option) && !numbers.count(option)) throw UsageError("unknown option '" + option + "'");
    if (i + 1 >= argc) throw UsageError(option + " needs a value");
    const std::string value = argv[++i];
    if (text.count(option)) {
      *text[option] = value;
    } else {
      *numbers[option] = parse_int(option, value, option == "--seed" ? 0 : 1);
    }
  }
  if (args.weights.empty()) throw UsageError("--weights is required");
  return args;
}

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
  TORCH_CHECK_VALUE(false, "the weights have no fc.weight to take the number of classes from; pass --classes");
}

int run(const Args& args) {
  const auto device = pick_device(args.device);
  const auto weights = torchtl::io::read_weights(args.weights);
  const int64_t classes = args.classes ? args.classes : classes_in(weights);

  torchtl::models::ResNet model(torchtl::models::resnet_options(args.arch).num_classes(classes));
  torchtl::io::load_state_dict(*model, weights);
  model->to(device);
  model->eval();

  torch::manual_seed(static_cast<uint64_t>(args.seed));
  const auto x = args.input.empty() ? torch::randn({args.batch, 3, args.size, args.size}) : read_input(args.input);
  torch::NoGradGuard no_grad;
  const auto probabilities = torch::softmax(model(x.to(device)), 1).cpu();
  const auto [top, index] = probabilities.topk(std::min(args.topk, classes), 1);

  std::cout << args.arch << " (" << classes << " classes) from " << args.weights << " on " << device << ", input "
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
  try {
    args = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "resnet_inference: " << e.what() << "\n" << kUsage;
    return 2;
  }
  try {
    return run(args);
  } catch (const c10::Error& e) {
    // The message alone: the C++ backtrace says nothing to someone who passed a wrong file.
    std::cerr << "resnet_inference: error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "resnet_inference: error: " << e.what() << "\n";
  }
  return 1;
}
