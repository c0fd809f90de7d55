// Transfer learning with a ResNet, all in C++. Loads an ImageNet
// ResNet (a traced archive such as resnet18_traced.pt, or a torch.save'd state dict),
// replaces its head with one for --num-classes, fine-tunes every layer or trains the new head on the
// frozen features, evaluates on the validation map file after every epoch, keeps the best model
// and evaluates it again at the end.
//
//   transfer_learning --train train.txt --val val.txt --weights resnet18_traced.pt --num-classes 2
//   transfer_learning --train train.txt --val val.txt --weights resnet18.pth --num-classes 2 --mode feature_extractor
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

struct Args {
  std::string train, val, weights, model = "resnet18", mode, device, out, opt = "sgd", lr_scheduler = "cosine", resume,
      amp = "off";
  int64_t num_classes = 0, epochs = 10, batch_size = 8, size = 224, workers = 2, seed = 0, lr_warmup_epochs = 0,
          lr_step_size = 7;
  double lr = 0.01, momentum = 0.9, weight_decay = 1e-4, label_smoothing = 0.0, lr_gamma = 0.1;
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
    model = models::ResNet(models::resnet_options(args.model).num_classes(args.num_classes));
    std::cout << args.model << " from random initialisation, " << args.num_classes << " classes\n";
  } else {
    const auto weights = io::read_weights(args.weights);
    const int64_t pretrained = classes_in(weights, args.weights);
    model = models::ResNet(models::resnet_options(args.model).num_classes(pretrained));
    io::load_state_dict(*model, weights);
    // A new head even when the class counts agree: the old one scores the old classes.
    model->reset_classifier(args.num_classes);
    std::cout << args.model << " from " << args.weights << " (" << weights.size() << " tensors, " << pretrained
              << " classes); new head: Linear(" << model->num_features() << ", " << args.num_classes << ")\n";
  }

  const auto train_transform = std::make_shared<const data::ClassificationTransform>(
      data::ClassificationTransformOptions().train(true).size(args.size));
  const auto eval_transform = std::make_shared<const data::ClassificationTransform>(
      data::ClassificationTransformOptions().train(false).size(args.size).resize_size(args.size * 256 / 224));
  auto train_set = std::make_shared<data::MapDataset>(
      args.train,
      data::MapDatasetOptions().transform(train_transform).num_classes(args.num_classes).seed(static_cast<uint64_t>(args.seed)));
  auto val_set = std::make_shared<data::MapDataset>(
      args.val, data::MapDatasetOptions().transform(eval_transform).num_classes(args.num_classes));
  const auto loader_options =
      data::LoaderOptions().batch_size(args.batch_size).num_workers(args.workers).seed(static_cast<uint64_t>(args.seed));
  const auto train = examples::make_loader(train_set, data::LoaderOptions(loader_options).shuffle(true));
  const auto val = examples::make_loader(val_set, loader_options);

  const auto options = engine::FitOptions()
                           .task("classification")
                           .mode(args.mode)
                           .optimizer(args.opt == "sgd_nesterov" ? "sgd" : args.opt)
                           .nesterov(args.opt == "sgd_nesterov")
                           .lr(args.lr)
                           .momentum(args.momentum)
                           .weight_decay(args.weight_decay)
                           .label_smoothing(args.label_smoothing)
                           .lr_schedule(args.lr_scheduler)
                           .warmup_epochs(args.lr_warmup_epochs)
                           .step_size(args.lr_step_size)
                           .gamma(args.lr_gamma)
                           .epochs(args.epochs)
                           .device(device.str())
                           .amp(args.amp)
                           .checkpoint_dir(args.out)
                           .resume(args.resume)
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
  if (args.num_classes > 5) std::cout << "  acc@5 " << final_eval.acc5;
  std::cout << "  (" << final_eval.images << " images)\nconfusion matrix (rows: true class):\n"
            << final_eval.confusion << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  // The names and defaults of `torchtl train classification` (tests/cpp/cli_defaults.py checks them).
  examples::Options options(
      "transfer_learning --train MAP --val MAP --num-classes N [--weights PATH] [options]",
      "Fine-tunes a ResNet (every layer), trains a new head on its frozen features, or trains it from scratch.");
  options.text("--train", &args.train, "training map file, one `image<TAB>class index` a line (paths relative to it)");
  options.text("--val", &args.val, "validation map file, evaluated after every epoch");
  options.integer("--num-classes,--classes", &args.num_classes, 1, "number of classes of the new head (required)",
                  /*show_default=*/false);
  options.text("--weights", &args.weights,
               "the pretrained model: a traced/scripted archive (torch.jit.save) or a torch.save'd state dict");
  options.text("--model,--arch", &args.model, "resnet18, resnet34, resnet50, resnet101, resnet152, resnext*, wide_resnet*");
  options.text("--mode", &args.mode,
               "finetune: every layer trains; feature_extractor: only the new head; scratch: random initialisation, "
               "no --weights (default: finetune with --weights, else scratch)",
               {"scratch", "finetune", "feature_extractor"});
  options.text("--opt,--optimizer", &args.opt, "optimizer", {"sgd", "sgd_nesterov", "adam", "adamw"});
  options.real("--lr", &args.lr, 0, false, "learning rate");
  options.real("--momentum", &args.momentum, 0, true, "SGD momentum");
  options.real("--wd,--weight-decay", &args.weight_decay, 0, true, "weight decay");
  options.real("--label-smoothing", &args.label_smoothing, 0, true, "label smoothing of the cross-entropy loss");
  options.text("--lr-scheduler,--lr-schedule", &args.lr_scheduler, "learning-rate schedule",
               {"constant", "step", "cosine", "poly"});
  options.integer("--lr-warmup-epochs", &args.lr_warmup_epochs, 0, "epochs of linear warm-up");
  options.integer("--lr-step-size", &args.lr_step_size, 1, "--lr-scheduler step: epochs per decay");
  options.real("--lr-gamma", &args.lr_gamma, 0, false, "--lr-scheduler step: decay factor");
  options.integer("--size", &args.size, 16, "training crop and evaluation size (evaluation resizes to size*256/224 first)");
  options.integer("--epochs", &args.epochs, 1, "epochs to train");
  options.integer("-b,--batch-size", &args.batch_size, 1, "images per training batch");
  options.integer("-j,--workers", &args.workers, 0, "loader threads");
  options.integer("--seed", &args.seed, 0, "fixes sampling order, augmentation and the new head");
  options.text("--device", &args.device, "cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)");
  options.text("--amp", &args.amp,
               "mixed precision: bf16 (CUDA, or a CPU with AVX-512 BF16 or AMX) or fp16 (CUDA)", {"off", "fp16", "bf16"});
  options.text("--resume", &args.resume, "last.pt of a run to continue (its folder is the default --output-dir)");
  options.text("--output-dir,--out", &args.out,
               "folder for best.pt (best validation accuracy, a state dict torchvision loads) and last.pt "
               "(default: runs/classification_<model>; an earlier run there is never overwritten)");
  const auto check = [&] {
    if (args.train.empty() || args.val.empty()) throw examples::UsageError("--train and --val are required");
    if (args.num_classes == 0) throw examples::UsageError("--num-classes is required");
    if (args.label_smoothing >= 1) throw examples::UsageError("--label-smoothing expects a number < 1");
    if (args.mode.empty()) args.mode = args.weights.empty() ? "scratch" : "finetune";
    if (args.mode == "scratch" && !args.weights.empty()) {
      throw examples::UsageError("--mode scratch starts from random weights; drop --weights or choose finetune");
    }
    if (args.mode != "scratch" && args.weights.empty()) {
      throw examples::UsageError("--weights is required with --mode " + args.mode);
    }
    if (args.out.empty()) args.out = examples::default_output_dir("classification", args.model, args.resume);
    examples::check_output_dir(args.out, args.resume);
  };
  return examples::main_of("transfer_learning", options, argc, argv, check, [&] { return run(args); });
}
