// Transfer learning with a ResNet, all in C++: the seeds' program done right. Loads an ImageNet
// ResNet (a traced archive such as the seeds' resnet18_Python.pt, or a torch.save'd state dict),
// replaces its head with one for --classes, fine-tunes every layer or trains the new head on the
// frozen features, evaluates on the validation map file after every epoch, keeps the best model
// and evaluates it again at the end.
//
//   transfer_learning --train train.txt --val val.txt --weights resnet18_Python.pt --classes 2
//   transfer_learning --train train.txt --val val.txt --weights resnet18.pth --classes 2 --mode feature_extractor
//
// best.pt is a state dict that torchvision opens: resnet18(num_classes=2).load_state_dict(torch.load(...)).
#include <torch/torch.h>

#include <chrono>
#include <iomanip>
#include <iostream>

#include "cli.h"
#include "data/datasets.h"
#include "engine/trainer.h"
#include "io/weights.h"
#include "models/resnet.h"

namespace data = torchtl::data;
namespace engine = torchtl::engine;
namespace examples = torchtl::examples;
namespace io = torchtl::io;
namespace models = torchtl::models;

namespace {

const char* const kUsage =
    "usage: transfer_learning --train MAP --val MAP --classes N [--weights PATH] [--arch NAME]\n"
    "                         [--mode finetune|feature_extractor|scratch] [--epochs N] [--lr LR] [--batch-size N]\n"
    "                         [--size PIXELS] [--workers N] [--seed S] [--device cpu|cuda] [--out DIR]\n"
    "  --train, --val  map files, one `image<TAB>class index` a line (paths relative to the map file)\n"
    "  --classes       number of classes of the new head\n"
    "  --weights       the pretrained model: a traced/scripted archive (torch.jit.save, e.g. the seeds'\n"
    "                  resnet18_Python.pt) or a torch.save'd state dict; required unless --mode scratch\n"
    "  --arch          resnet18 (default), resnet34, resnet50, resnet101, resnet152, resnext*, wide_resnet*\n"
    "  --mode          finetune (default): every layer trains; feature_extractor: the backbone is frozen and\n"
    "                  only the new head trains; scratch: random initialisation, no --weights\n"
    "  --epochs        default 5; --lr default 0.001 (SGD, momentum 0.9); --batch-size default 8\n"
    "  --size          training crop and evaluation size (default 224; evaluation resizes to size*256/224 first)\n"
    "  --workers       loader threads (default 2); --seed fixes sampling, augmentation and the new head (default 0)\n"
    "  --device        default: cuda when available, else cpu\n"
    "  --out           folder for best.pt (best validation accuracy, a state dict torchvision loads) and last.pt\n"
    "                  (a resumable checkpoint); default transfer_learning_out\n";

struct Args {
  std::string train, val, weights, arch = "resnet18", mode = "finetune", device, out = "transfer_learning_out";
  int64_t classes = 0, epochs = 5, batch_size = 8, size = 224, workers = 2, seed = 0;
  double lr = 0.001;
};

// The head's width as saved: the pretrained model is rebuilt as it was before its head is replaced.
int64_t classes_in(const io::StateDict& weights, const std::string& path) {
  for (const auto& [name, tensor] : weights) {
    if (name == "fc.weight" && tensor.dim() == 2) return tensor.size(0);
  }
  TORCH_CHECK_VALUE(false, "'", path, "' has no fc.weight: not the weights of a ResNet classifier");
}

double mb(int64_t n) { return static_cast<double>(n) / 1e6; }

int run(const Args& args) {
  const auto device = engine::resolve_device(args.device);
  torch::manual_seed(static_cast<uint64_t>(args.seed));

  models::ResNet model(nullptr);
  if (args.mode == "scratch") {
    model = models::ResNet(models::resnet_options(args.arch).num_classes(args.classes));
    std::cout << args.arch << " from random initialisation, " << args.classes << " classes\n";
  } else {
    const auto weights = io::read_weights(args.weights);
    const int64_t pretrained = classes_in(weights, args.weights);
    model = models::ResNet(models::resnet_options(args.arch).num_classes(pretrained));
    io::load_state_dict(*model, weights);
    // A new head even when the class counts agree: the old one scores the old classes.
    model->reset_classifier(args.classes);
    std::cout << args.arch << " from " << args.weights << " (" << weights.size() << " tensors, " << pretrained
              << " classes); new head: Linear(" << model->num_features() << ", " << args.classes << ")\n";
  }

  const auto train_transform = std::make_shared<const data::ClassificationTransform>(
      data::ClassificationTransformOptions().train(true).size(args.size));
  const auto eval_transform = std::make_shared<const data::ClassificationTransform>(
      data::ClassificationTransformOptions().train(false).size(args.size).resize_size(args.size * 256 / 224));
  auto train_set = std::make_shared<data::MapDataset>(
      args.train,
      data::MapDatasetOptions().transform(train_transform).num_classes(args.classes).seed(static_cast<uint64_t>(args.seed)));
  auto val_set = std::make_shared<data::MapDataset>(
      args.val, data::MapDatasetOptions().transform(eval_transform).num_classes(args.classes));
  const auto loader_options =
      data::LoaderOptions().batch_size(args.batch_size).num_workers(args.workers).seed(static_cast<uint64_t>(args.seed));
  const auto train = examples::make_loader(train_set, data::LoaderOptions(loader_options).shuffle(true));
  const auto val = examples::make_loader(val_set, loader_options);

  const auto options = engine::FitOptions()
                           .task("classification")
                           .mode(args.mode)
                           .lr(args.lr)
                           .epochs(args.epochs)
                           .device(device.str())
                           .checkpoint_dir(args.out)
                           .seed(static_cast<uint64_t>(args.seed));
  std::cout << "mode " << args.mode << ", " << train_set->map_file().entries.size() << " training and "
            << val_set->map_file().entries.size() << " validation images, " << args.size << " px, batch "
            << args.batch_size << ", lr " << args.lr << ", on " << device << "\n"
            << std::fixed << std::setprecision(4);

  using Clock = std::chrono::steady_clock;
  auto epoch_start = Clock::now();
  bool counted = false;
  const auto progress = [&](const engine::Progress& p) {
    if (!counted) {
      // fit() has frozen the backbone by now, in feature_extractor mode.
      std::cout << std::setprecision(2) << mb(examples::count_parameters(*model, true)) << "M of "
                << mb(examples::count_parameters(*model, false)) << "M parameters train\n"
                << std::setprecision(4);
      counted = true;
    }
    if (p.batch != p.num_batches) return true;
    const double seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();
    if (p.training) {
      std::cout << "epoch " << p.epoch + 1 << "/" << p.epochs << "  train loss " << p.loss << "  acc " << p.accuracy
                << "  (" << p.images << " images, " << std::setprecision(1) << seconds << " s)" << std::setprecision(4);
    } else {
      std::cout << "  |  val loss " << p.loss << "  acc " << p.accuracy << std::endl;
      epoch_start = Clock::now();
    }
    return true;
  };
  const auto result = engine::fit(model.ptr(), train, &val, options, progress);

  const auto best = args.out + "/best.pt";
  std::cout << "best validation accuracy " << result.best_metric << " after epoch " << result.best_epoch + 1
            << "; saved " << best << " and " << args.out << "/last.pt\n";
  io::load_weights(*model, best);
  const auto final_eval = engine::evaluate(model.ptr(), val, options);
  std::cout << "best.pt on " << args.val << ": loss " << final_eval.loss << "  acc@1 " << final_eval.acc1;
  if (args.classes > 5) std::cout << "  acc@5 " << final_eval.acc5;
  std::cout << "  (" << final_eval.images << " images)\nconfusion matrix (rows: true class):\n"
            << final_eval.confusion << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  examples::Options options(kUsage);
  options.text("--train", &args.train);
  options.text("--val", &args.val);
  options.text("--weights", &args.weights);
  options.text("--arch", &args.arch);
  options.text("--mode", &args.mode, {"finetune", "feature_extractor", "scratch"});
  options.text("--device", &args.device);
  options.text("--out", &args.out);
  options.integer("--classes", &args.classes, 1);
  options.integer("--epochs", &args.epochs, 1);
  options.integer("--batch-size", &args.batch_size, 1);
  options.integer("--size", &args.size, 16);
  options.integer("--workers", &args.workers, 0);
  options.integer("--seed", &args.seed, 0);
  options.positive("--lr", &args.lr);
  const auto check = [&] {
    if (args.train.empty() || args.val.empty()) throw examples::UsageError("--train and --val are required");
    if (args.classes == 0) throw examples::UsageError("--classes is required");
    if (args.mode == "scratch" && !args.weights.empty()) {
      throw examples::UsageError("--mode scratch starts from random weights; drop --weights or choose finetune");
    }
    if (args.mode != "scratch" && args.weights.empty()) {
      throw examples::UsageError("--weights is required with --mode " + args.mode);
    }
  };
  return examples::main_of("transfer_learning", options, argc, argv, check, [&] { return run(args); });
}
