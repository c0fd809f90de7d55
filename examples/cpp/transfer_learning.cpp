// Transfer learning with a ResNet, all in C++. Loads an ImageNet
// ResNet (a traced archive such as resnet18_traced.pt, or a torch.save'd state dict),
// replaces its head with one for --num-classes, fine-tunes every layer or trains the new head on the
// frozen features, evaluates on the validation map file after every epoch, keeps the best model
// and evaluates it again at the end.
//
//   transfer_learning --train train.txt --val val.txt --weights resnet18_traced.pt --num-classes 2
//   transfer_learning --train train.txt --val val.txt --weights resnet18.pth --num-classes 2 --mode feature_extractor
//
// best.pt is a state dict that torchvision opens: resnet18(num_classes=2).load_state_dict(torch.load(...)),
// and a model file (io/model_file.h) that carries the builder, the class names of the training map
// file's classes file and the evaluation transform, so that torchtl::Predictor opens it alone.
#include <torch/torch.h>

#include <iomanip>
#include <iostream>

#include "cli.h"
#include "process_group.h"
#include "data/datasets.h"
#include "engine/trainer.h"
#include "io/model_file.h"
#include "io/pretrained.h"
#include "io/weights.h"
#include "models/resnet.h"

namespace data = torchtl::data;
namespace engine = torchtl::engine;
namespace examples = torchtl::examples;
namespace io = torchtl::io;
namespace models = torchtl::models;

namespace {

struct Args : examples::TrainArgs {
  int64_t size = 224;
  double label_smoothing = 0.0;
  Args() {
    model = "resnet18";
    lr_scheduler = "cosine";
  }
};

double mb(int64_t n) { return static_cast<double>(n) / 1e6; }

int run(const Args& args) {
  // Under torchrun: this rank's process group; rank 0 alone reports.
  const auto launch = examples::join_launch(engine::resolve_device(args.device));
  const auto device = launch.device;
  const examples::OutputOfRankZero output(launch.rank);
  torch::manual_seed(static_cast<uint64_t>(args.seed));

  models::ResNet model(nullptr);
  if (args.mode == "scratch") {
    model = models::ResNet(models::resnet_options(args.model).num_classes(args.num_classes));
    std::cout << args.model << " from random initialisation, " << args.num_classes << " classes\n";
  } else {
    const auto weights = io::read_weights(args.weights);
    // The head's width as saved: the pretrained model is rebuilt as it was before its head is replaced.
    const auto saved_classes = io::head_num_classes(weights, "fc.weight");
    TORCH_CHECK_VALUE(saved_classes, "'", args.weights, "' has no fc.weight: not the weights of a ResNet classifier");
    const int64_t pretrained = *saved_classes;
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
  const auto train = data::make_loader(train_set, data::LoaderOptions(loader_options).shuffle(true));
  const auto val = data::make_loader(val_set, loader_options);

  io::ModelMetadata metadata;
  metadata.builder = args.model;
  metadata.builder_args.set("num_classes", io::Json(args.num_classes));
  metadata.classes = data::read_map_classes(args.train);
  metadata.transform = io::eval_transform(eval_transform->options());
  const auto options = examples::fit_options(args, "classification", device)
                           .process_group(launch.group)
                           .label_smoothing(args.label_smoothing)
                           .model_metadata(io::to_json(metadata));
  std::cout << "mode " << args.mode << ", " << train_set->map_file().entries.size() << " training and "
            << val_set->map_file().entries.size() << " validation images, " << args.size << " px, batch "
            << args.batch_size << ", lr " << args.lr << ", on " << device << examples::processes(launch) << "\n"
            << std::fixed << std::setprecision(4);

  bool counted = false;
  const auto progress = [&](const engine::Progress&) {
    if (!counted) {
      // fit() has frozen the backbone by now, in feature_extractor mode.
      std::cout << std::setprecision(2) << mb(examples::count_parameters(*model, true)) << "M of "
                << mb(examples::count_parameters(*model, false)) << "M parameters train\n"
                << std::setprecision(4);
      counted = true;
    }
    return true;
  };
  // From the epoch's record: in a data-parallel run, the whole run's images rather than this rank's.
  const auto epoch_end = [&](const engine::EpochRecord& e) {
    std::cout << "epoch " << e.epoch + 1 << "/" << args.epochs << "  train loss " << e.train_loss << "  acc "
              << e.train_acc << "  (" << e.images << " images, " << std::setprecision(1) << e.seconds << " s)"
              << std::setprecision(4) << "  |  val loss " << e.val.loss << "  acc " << e.val.acc1 << std::endl;
    return true;
  };
  const auto result = engine::fit(model.ptr(), train, &val, options, progress, epoch_end);

  const auto final_eval = examples::evaluate_best(model.ptr(), val, options, result, "accuracy");
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
  examples::add_data_options(options, args,
                             "training map file, one `image<TAB>class index` a line (paths relative to it)",
                             "number of classes of the new head (required)");
  options.text("--weights", &args.weights,
               "the pretrained model: a traced/scripted archive (torch.jit.save) or a torch.save'd state dict");
  options.text("--model,--arch", &args.model, "resnet18, resnet34, resnet50, resnet101, resnet152, resnext*, wide_resnet*");
  options.text("--mode", &args.mode,
               "finetune: every layer trains; feature_extractor: only the new head; scratch: random initialisation, "
               "no --weights (default: finetune with --weights, else scratch)",
               engine::fit_option_choices().at("mode"));
  examples::add_optimizer_options(options, args);
  options.real("--label-smoothing", &args.label_smoothing, 0, true, "label smoothing of the cross-entropy loss");
  options.integer("--size", &args.size, 16, "training crop and evaluation size (evaluation resizes to size*256/224 first)");
  options.integer("-b,--batch-size", &args.batch_size, 1, "images per training batch");
  options.integer("--seed", &args.seed, 0, "fixes sampling order, augmentation and the new head");
  examples::add_run_options(options, args);
  options.text("--output-dir,--out", &args.out,
               "folder for best.pt (best validation accuracy: a state dict torchvision loads, with the metadata torchtl's Predictor reads) and last.pt "
               "(default: runs/classification_<model>; an earlier run there is never overwritten)");
  const auto check = [&] {
    if (args.label_smoothing >= 1) throw examples::UsageError("--label-smoothing expects a number < 1");
    if (!args.mode.empty() && args.mode != "scratch" && args.weights.empty()) {
      throw examples::UsageError("--weights is required with --mode " + args.mode);
    }
    examples::check_train_args(args, "classification", "");
  };
  return examples::main_of("transfer_learning", options, argc, argv, check, [&] { return run(args); });
}
