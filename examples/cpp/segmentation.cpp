// Semantic segmentation with FCN or DeepLabV3 (ResNet-50/101 backbones), all in C++, following
// torchvision's references/segmentation recipe: SGD with poly learning-rate decay, the aux head's
// loss weighted 0.5, label 255 ignored, mean IoU from the confusion matrix. Starts from a whole
// segmentation model's weights (torchvision's deeplabv3_resnet50 state dict, a traced archive),
// from an ImageNet ResNet's weights for the backbone only, or from scratch.
//
//   segmentation --train seg_train.txt --val seg_val.txt --arch deeplabv3_resnet50 --classes 21
//   segmentation --train seg_train.txt --val seg_val.txt --weights resnet50.pth --classes 3 --epochs 30
//
// best.pt is a state dict torchvision opens: deeplabv3_resnet50(num_classes=21, aux_loss=True).
#include <torch/torch.h>

#include <chrono>
#include <iomanip>
#include <iostream>

#include "cli.h"
#include "data/datasets.h"
#include "engine/trainer.h"
#include "io/weights.h"
#include "models/module_tree.h"
#include "models/segmentation.h"

namespace data = torchtl::data;
namespace engine = torchtl::engine;
namespace examples = torchtl::examples;
namespace io = torchtl::io;
namespace models = torchtl::models;

namespace {

const char* const kUsage =
    "usage: segmentation --train MAP --val MAP [--arch NAME] [--classes N] [--weights PATH] [--aux on|off]\n"
    "                    [--mode finetune|feature_extractor|scratch] [--epochs N] [--lr LR] [--batch-size N]\n"
    "                    [--base-size PIXELS] [--crop-size PIXELS] [--workers N] [--seed S] [--device cpu|cuda]\n"
    "                    [--out DIR]\n"
    "  --train, --val  map files, one `image<TAB>mask` a line (paths relative to the map file); masks are\n"
    "                  palette or gray PNGs of class indices, 255 = ignore\n"
    "  --arch          deeplabv3_resnet50 (default), deeplabv3_resnet101, fcn_resnet50, fcn_resnet101\n"
    "  --classes       number of classes (default 21, Pascal VOC's)\n"
    "  --weights       a segmentation model's weights (state dict or traced archive; the heads are replaced\n"
    "                  when their class count differs), or an ImageNet ResNet's for the backbone alone\n"
    "  --aux           the auxiliary FCN head on layer3, trained with weight 0.5 (default on)\n"
    "  --mode          finetune (default) or feature_extractor (only the heads train; needs --weights) or\n"
    "                  scratch (no --weights)\n"
    "  --epochs        default 5; --lr default 0.01 (SGD, momentum 0.9, weight decay 1e-4, poly decay);\n"
    "                  --batch-size default 4 (validation runs one image at a time: sizes differ)\n"
    "  --base-size     shorter side of the validation images and centre of the training scale jitter (0.5x..2x)\n"
    "                  (default 520); --crop-size: the training crop (default 480)\n"
    "  --workers       loader threads (default 2); --seed (default 0)\n"
    "  --device        default: cuda when available, else cpu\n"
    "  --out           folder for best.pt (best validation mean IoU) and last.pt; default segmentation_out\n";

struct Args {
  std::string train, val, weights, arch = "deeplabv3_resnet50", aux = "on", mode = "finetune", device,
                                   out = "segmentation_out";
  int64_t classes = 21, epochs = 5, batch_size = 4, base_size = 520, crop_size = 480, workers = 2, seed = 0;
  double lr = 0.01;
};

std::shared_ptr<models::SegmentationModelImpl> build(const Args& args, int64_t classes, bool aux) {
  const auto split = args.arch.find('_');
  const auto family = args.arch.substr(0, split), backbone = args.arch.substr(split + 1);
  if (family == "deeplabv3") return models::deeplabv3_resnet(backbone, classes, aux).ptr();
  return models::fcn_resnet(backbone, classes, aux).ptr();
}

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

// Rows of a head's last convolution in the weights (its class count), or 0 when absent.
int64_t classes_of(const io::StateDict& weights, const std::string& head) {
  for (const auto& [name, tensor] : weights) {
    if (name == head + ".4.weight" && tensor.dim() == 4) return tensor.size(0);
  }
  return 0;
}

// A fresh last convolution (torch.nn's default initialisation) for `classes`, in head `name`.
void replace_last_conv(models::SegmentationModelImpl& model, const std::string& name, int64_t classes) {
  auto head = model.named_children()[name];
  auto old = head->named_children()["4"];
  const auto in_channels = old->named_parameters(false)["weight"].size(1);
  models::replace_child(*head, "4", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, classes, 1)).ptr());
}

std::shared_ptr<models::SegmentationModelImpl> load(const Args& args, bool aux) {
  if (args.weights.empty()) {
    std::cout << args.arch << " from random initialisation, " << args.classes << " classes\n";
    return build(args, args.classes, aux);
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
    auto model = build(args, args.classes, aux);
    const auto result = io::load_state_dict(*model, backbone, /*strict=*/false);
    for (const auto& key : result.missing_keys) {
      TORCH_CHECK_VALUE(starts_with(key, "classifier.") || starts_with(key, "aux_classifier."), "'", args.weights,
                        "' lacks backbone weight ", key.substr(9), " of ", args.arch);
    }
    std::cout << args.arch << ": backbone from " << args.weights << ", heads from random initialisation, "
              << args.classes << " classes\n";
    return model;
  }

  const int64_t saved_classes = classes_of(weights, "classifier");
  TORCH_CHECK_VALUE(saved_classes > 0, "'", args.weights, "' has no classifier.4.weight: not an FCN/DeepLabV3 model");
  const bool saved_aux = classes_of(weights, "aux_classifier") > 0;
  auto model = build(args, saved_classes, aux && saved_aux);
  if (!aux) {
    weights.erase(std::remove_if(weights.begin(), weights.end(),
                                 [](const auto& w) { return starts_with(w.first, "aux_classifier."); }),
                  weights.end());
  }
  io::load_state_dict(*model, weights);
  std::cout << args.arch << " from " << args.weights << " (" << weights.size() << " tensors, " << saved_classes
            << " classes)";
  if (saved_classes != args.classes) {
    replace_last_conv(*model, "classifier", args.classes);
    if (aux && saved_aux) replace_last_conv(*model, "aux_classifier", args.classes);
    std::cout << "; new last layer of the heads for " << args.classes << " classes";
  }
  if (aux && !saved_aux) {
    // The aux head the weights lack: a model with it, holding everything else as loaded.
    auto with_aux = build(args, args.classes, true);
    const auto result = io::load_state_dict(*with_aux, io::state_dict(*model), /*strict=*/false);
    TORCH_CHECK(result.unexpected_keys.empty(), "internal: unexpected keys moving to a model with an aux head");
    model = with_aux;
    std::cout << "; aux head from random initialisation";
  }
  std::cout << "\n";
  return model;
}

int run(const Args& args) {
  const auto device = engine::resolve_device(args.device);
  torch::manual_seed(static_cast<uint64_t>(args.seed));
  auto model = load(args, args.aux == "on");

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
      examples::make_loader(train_set, data::LoaderOptions(loader_options).batch_size(args.batch_size).shuffle(true));
  const auto val = examples::make_loader(val_set, data::LoaderOptions(loader_options).batch_size(1));

  const auto options = engine::FitOptions()
                           .task("segmentation")
                           .mode(args.mode)
                           .lr(args.lr)
                           .weight_decay(1e-4)
                           .lr_schedule("poly")
                           .aux_weight(0.5)
                           .ignore_index(255)
                           .epochs(args.epochs)
                           .device(device.str())
                           .checkpoint_dir(args.out)
                           .seed(static_cast<uint64_t>(args.seed));
  std::cout << "mode " << args.mode << ", " << train_set->map_file().entries.size() << " training and "
            << val_set->map_file().entries.size() << " validation images, crop " << args.crop_size << " px, batch "
            << args.batch_size << ", lr " << args.lr << " (poly), on " << device << "\n"
            << std::fixed << std::setprecision(4);

  using Clock = std::chrono::steady_clock;
  auto epoch_start = Clock::now();
  const auto progress = [&](const engine::Progress& p) {
    if (p.batch != p.num_batches) return true;
    const double seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();
    if (p.training) {
      std::cout << "epoch " << p.epoch + 1 << "/" << p.epochs << "  train loss " << p.loss << "  (" << p.images
                << " images, " << std::setprecision(1) << seconds << " s)" << std::setprecision(4) << std::endl;
      epoch_start = Clock::now();
    }
    return true;
  };
  const auto result = engine::fit(model, train, &val, options, progress);
  for (const auto& epoch : result.epochs) {
    std::cout << "epoch " << epoch.epoch + 1 << "  val loss " << epoch.val.loss << "  pixel acc "
              << epoch.val.pixel_accuracy << "  mean IoU " << epoch.val.mean_iou << "\n";
  }

  const auto best = args.out + "/best.pt";
  std::cout << "best validation mean IoU " << result.best_metric << " after epoch " << result.best_epoch + 1
            << "; saved " << best << " and " << args.out << "/last.pt\n";
  io::load_weights(*model, best);
  const auto final_eval = engine::evaluate(model, val, options);
  std::cout << "best.pt on " << args.val << ": loss " << final_eval.loss << "  pixel acc " << final_eval.pixel_accuracy
            << "  mean IoU " << final_eval.mean_iou << "\nIoU per class:";
  for (size_t c = 0; c < final_eval.iou.size(); ++c) std::cout << " " << c << ":" << final_eval.iou[c];
  std::cout << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  examples::Options options(kUsage);
  options.text("--train", &args.train);
  options.text("--val", &args.val);
  options.text("--weights", &args.weights);
  options.text("--arch", &args.arch, {"deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50", "fcn_resnet101"});
  options.text("--aux", &args.aux, {"on", "off"});
  options.text("--mode", &args.mode, {"finetune", "feature_extractor", "scratch"});
  options.text("--device", &args.device);
  options.text("--out", &args.out);
  options.integer("--classes", &args.classes, 1);
  options.integer("--epochs", &args.epochs, 1);
  options.integer("--batch-size", &args.batch_size, 1);
  options.integer("--base-size", &args.base_size, 16);
  options.integer("--crop-size", &args.crop_size, 16);
  options.integer("--workers", &args.workers, 0);
  options.integer("--seed", &args.seed, 0);
  options.positive("--lr", &args.lr);
  const auto check = [&] {
    if (args.train.empty() || args.val.empty()) throw examples::UsageError("--train and --val are required");
    if (args.mode == "scratch" && !args.weights.empty()) {
      throw examples::UsageError("--mode scratch starts from random weights; drop --weights or choose finetune");
    }
    if (args.mode == "feature_extractor" && args.weights.empty()) {
      throw examples::UsageError("--mode feature_extractor needs --weights: a random backbone extracts nothing");
    }
  };
  return examples::main_of("segmentation", options, argc, argv, check, [&] { return run(args); });
}
