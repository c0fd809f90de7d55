// Semantic segmentation with FCN or DeepLabV3 (ResNet-50/101 backbones), all in C++, following
// torchvision's references/segmentation recipe: SGD with poly learning-rate decay, the aux head's
// loss weighted 0.5, label 255 ignored, mean IoU from the confusion matrix. Starts from a whole
// segmentation model's weights (torchvision's deeplabv3_resnet50 state dict, a traced archive),
// from an ImageNet ResNet's weights for the backbone only, or from scratch.
//
//   segmentation --train seg_train.txt --val seg_val.txt --model deeplabv3_resnet50 --num-classes 21 --aux-loss
//   segmentation --train seg_train.txt --val seg_val.txt --weights resnet50.pth --num-classes 3 --epochs 30
//
// best.pt is a state dict torchvision opens: deeplabv3_resnet50(num_classes=21, aux_loss=True), and a
// model file (io/model_file.h) whose metadata lets torchtl::Predictor open it alone.
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
#include "models/segmentation.h"

namespace data = torchtl::data;
namespace engine = torchtl::engine;
namespace examples = torchtl::examples;
namespace io = torchtl::io;
namespace models = torchtl::models;

namespace {

struct Args : examples::TrainArgs {
  std::string aux;
  int64_t base_size = 520, crop_size = 480;
  bool aux_loss = false;
  Args() {
    model = "fcn_resnet50";
    lr_scheduler = "poly";
    batch_size = 4;
  }
};

std::shared_ptr<models::SegmentationModelImpl> build(const Args& args, int64_t classes, bool aux) {
  const auto split = args.model.find('_');
  const auto family = args.model.substr(0, split), backbone = args.model.substr(split + 1);
  if (family == "deeplabv3") return models::deeplabv3_resnet(backbone, classes, aux).ptr();
  return models::fcn_resnet(backbone, classes, aux).ptr();
}

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

std::shared_ptr<models::SegmentationModelImpl> load(const Args& args, bool aux) {
  if (args.weights.empty()) {
    std::cout << args.model << " from random initialisation, " << args.num_classes << " classes\n";
    return build(args, args.num_classes, aux);
  }
  auto weights = io::read_weights(args.weights);
  const bool whole_model =
      std::any_of(weights.begin(), weights.end(), [](const auto& w) { return starts_with(w.first, "backbone."); });
  if (!whole_model) {
    // An ImageNet ResNet: torchvision's weights_backbone. Its layers go under backbone., fc is dropped.
    TORCH_CHECK_VALUE(std::any_of(weights.begin(), weights.end(), [](const auto& w) { return w.first == "conv1.weight"; }),
                      "'", args.weights, "' holds neither a segmentation model (backbone.*) nor a ResNet (conv1.weight)");
    io::StateDict backbone;
    for (auto& [name, tensor] : weights) {
      if (!starts_with(name, "fc.")) backbone.emplace_back("backbone." + name, tensor);
    }
    auto model = build(args, args.num_classes, aux);
    const auto result = io::load_state_dict(*model, backbone, /*strict=*/false);
    for (const auto& key : result.missing_keys) {
      TORCH_CHECK_VALUE(starts_with(key, "classifier.") || starts_with(key, "aux_classifier."), "'", args.weights,
                        "' lacks backbone weight ", key.substr(9), " of ", args.model);
    }
    std::cout << args.model << ": backbone from " << args.weights << ", heads from random initialisation, "
              << args.num_classes << " classes\n";
    return model;
  }

  const auto saved_classes = io::head_num_classes(weights, "classifier.4.weight");
  TORCH_CHECK_VALUE(saved_classes, "'", args.weights, "' has no classifier.4.weight: not an FCN/DeepLabV3 model");
  const bool saved_aux = io::head_num_classes(weights, "aux_classifier.4.weight").has_value();
  if (!aux) {
    weights.erase(std::remove_if(weights.begin(), weights.end(),
                                 [](const auto& w) { return starts_with(w.first, "aux_classifier."); }),
                  weights.end());
  }
  auto model = build(args, args.num_classes, aux);
  // Heads of another class count keep their fresh last layer; so does an aux head the weights lack.
  const auto result =
      io::load_pretrained(*model, weights, {"classifier.", "aux_classifier."}, /*strict=*/!aux || saved_aux);
  for (const auto& key : result.missing_keys) {
    TORCH_CHECK_VALUE(starts_with(key, "aux_classifier."), "'", args.weights, "' lacks ", key, " of ", args.model);
  }
  TORCH_CHECK_VALUE(result.unexpected_keys.empty(), "'", args.weights, "' holds ", result.unexpected_keys.front(),
                    ", which ", args.model, " lacks");
  std::cout << args.model << " from " << args.weights << " (" << weights.size() << " tensors, " << *saved_classes
            << " classes)";
  if (!result.reinitialised.empty()) std::cout << "; new last layer of the heads for " << args.num_classes << " classes";
  if (aux && !saved_aux) std::cout << "; aux head from random initialisation";
  std::cout << "\n";
  return model;
}

int run(const Args& args) {
  // Under torchrun: this rank's process group; rank 0 alone reports.
  const auto launch = examples::join_launch(engine::resolve_device(args.device));
  const auto device = launch.device;
  const examples::OutputOfRankZero output(launch.rank);
  torch::manual_seed(static_cast<uint64_t>(args.seed));
  auto model = load(args, args.aux_loss);

  const auto train_transform = std::make_shared<const data::SegmentationTransform>(
      data::SegmentationTransformOptions().train(true).base_size(args.base_size).crop_size(args.crop_size));
  const auto eval_transform = std::make_shared<const data::SegmentationTransform>(
      data::SegmentationTransformOptions().train(false).base_size(args.base_size));
  auto train_set = std::make_shared<data::SegmentationMapDataset>(
      args.train, data::SegmentationMapDatasetOptions().transform(train_transform).seed(static_cast<uint64_t>(args.seed)));
  auto val_set = std::make_shared<data::SegmentationMapDataset>(
      args.val, data::SegmentationMapDatasetOptions().transform(eval_transform));
  const auto loader_options = data::LoaderOptions().num_workers(args.workers).seed(static_cast<uint64_t>(args.seed));
  const auto train =
      data::make_loader(train_set, data::LoaderOptions(loader_options).batch_size(args.batch_size).shuffle(true));
  const auto val = data::make_loader(val_set, data::LoaderOptions(loader_options).batch_size(1));

  io::ModelMetadata metadata;
  metadata.task = "segmentation";
  metadata.builder = args.model;
  metadata.builder_args.set("num_classes", io::Json(args.num_classes));
  metadata.builder_args.set("aux_loss", io::Json(args.aux_loss));
  metadata.classes = data::read_map_classes(args.train);
  metadata.transform = io::eval_transform(eval_transform->options());
  const auto options = examples::fit_options(args, "segmentation", device)
                           .process_group(launch.group)
                           .aux_weight(0.5)
                           .ignore_index(255)
                           .model_metadata(io::to_json(metadata));
  std::cout << "mode " << args.mode << ", " << train_set->map_file().entries.size() << " training and "
            << val_set->map_file().entries.size() << " validation images, crop " << args.crop_size << " px, batch "
            << args.batch_size << ", lr " << args.lr << " (" << args.lr_scheduler << "), on " << device
            << examples::processes(launch) << "\n"
            << std::fixed << std::setprecision(4);

  // From the epoch's record: in a data-parallel run, the whole run's images rather than this rank's.
  const auto epoch_end = [&](const engine::EpochRecord& e) {
    std::cout << "epoch " << e.epoch + 1 << "/" << args.epochs << "  train loss " << e.train_loss << "  (" << e.images
              << " images, " << std::setprecision(1) << e.seconds << " s)" << std::setprecision(4) << std::endl;
    return true;
  };
  const auto result = engine::fit(model, train, &val, options, nullptr, epoch_end);
  for (const auto& epoch : result.epochs) {
    std::cout << "epoch " << epoch.epoch + 1 << "  val loss " << epoch.val.loss << "  pixel acc "
              << epoch.val.pixel_accuracy << "  mean IoU " << epoch.val.mean_iou << "\n";
  }

  const auto final_eval = examples::evaluate_best(model, val, options, result, "mean IoU");
  std::cout << "best.pt on " << args.val << ": loss " << final_eval.loss << "  pixel acc " << final_eval.pixel_accuracy
            << "  mean IoU " << final_eval.mean_iou << "\nIoU per class:";
  for (size_t c = 0; c < final_eval.iou.size(); ++c) std::cout << " " << c << ":" << final_eval.iou[c];
  std::cout << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  // The names and defaults of `torchtl train segmentation` (tests/cpp/cli_defaults.py checks them).
  examples::Options options(
      "segmentation --train MAP --val MAP --num-classes N [--model NAME] [--weights PATH] [options]",
      "Trains FCN or DeepLabV3 as torchvision's references/segmentation: SGD, poly decay, aux loss 0.5, 255 ignored.");
  examples::add_data_options(options, args,
                             "training map file, one `image<TAB>mask` a line (paths relative to it); masks are "
                             "palette or gray PNGs of class indices, 255 = ignore",
                             "number of classes, 21 for PASCAL VOC (required)");
  options.text("--model,--arch", &args.model, "model",
               {"deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50", "fcn_resnet101"});
  options.text("--weights", &args.weights,
               "a segmentation model's weights (state dict or traced archive; the heads are replaced when their "
               "class count differs), or an ImageNet ResNet's for the backbone alone");
  options.flag("--aux-loss", &args.aux_loss, "add the auxiliary FCN head on layer3 (loss weight 0.5)");
  options.text("--aux", &args.aux, "the same as --aux-loss (on) or its absence (off)", {"on", "off"});
  options.text("--mode", &args.mode,
               "finetune, feature_extractor (only the heads train; needs --weights) or scratch (no --weights) "
               "(default: finetune with --weights, else scratch)",
               engine::fit_option_choices().at("mode"));
  examples::add_optimizer_options(options, args);
  options.integer("--base-size", &args.base_size, 16,
                  "shorter side of the evaluation images; training scales it by 0.5x to 2x");
  options.integer("--crop-size", &args.crop_size, 16, "training crop");
  options.integer("-b,--batch-size", &args.batch_size, 1,
                  "images per training batch (validation runs one image at a time: sizes differ)");
  options.integer("--seed", &args.seed, 0, "fixes sampling order, augmentation and initialisation");
  examples::add_run_options(options, args);
  options.text("--output-dir,--out", &args.out,
               "folder for best.pt (best validation mean IoU) and last.pt "
               "(default: runs/segmentation_<model>; an earlier run there is never overwritten)");
  const auto check = [&] {
    if (!args.aux.empty()) {
      if (args.aux_loss && args.aux == "off") throw examples::UsageError("--aux-loss and --aux off contradict");
      args.aux_loss = args.aux == "on";
    }
    if (args.mode == "feature_extractor" && args.weights.empty()) {
      throw examples::UsageError("--mode feature_extractor needs --weights: a random backbone extracts nothing");
    }
    examples::check_train_args(args, "segmentation", " (21 for PASCAL VOC)");
  };
  return examples::main_of("segmentation", options, argc, argv, check, [&] { return run(args); });
}
