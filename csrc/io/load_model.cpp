#include "io/load_model.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <algorithm>

#include "io/pretrained.h"
#include "models/module_tree.h"
#include "models/resnet.h"
#include "models/segmentation.h"

namespace torchtl::io {
namespace {

const std::vector<std::string>& segmentation_builders() {
  static const std::vector<std::string> names = {"deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50",
                                                 "fcn_resnet101"};
  return names;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string file(const std::string& source) { return "model file '" + source + "'"; }

// Refuses builder arguments the builder does not take: a silently ignored argument would build
// another model than the one that was trained.
void check_arguments(const Json& args, const std::vector<std::string>& known, const std::string& builder,
                     const std::string& source) {
  for (const auto& [key, value] : args.as_object("builder_args")) {
    TORCH_CHECK_VALUE(contains(known, key), file(source), ": field 'builder_args.", key, "' is not an argument of ",
                      builder, " (it takes ", c10::Join(", ", known), ")");
  }
}

template <typename T, typename F>
T argument(const Json& args, const std::string& key, T fallback, const std::string& source, F&& get) {
  const Json* value = args.find(key);
  if (value == nullptr || value->is_null()) return fallback;
  try {
    return get(*value, "builder_args." + key);
  } catch (const c10::TypeError& e) {
    TORCH_CHECK_TYPE(false, file(source), ": ", e.what_without_backtrace());
    throw;
  }
}

models::ResNetOptions resnet_options_of(const ModelMetadata& m, const std::string& source) {
  const Json& args = m.builder_args;
  check_arguments(args, {"num_classes", "zero_init_residual", "groups", "width_per_group", "replace_stride_with_dilation",
                         "norm_layer"},
                  m.builder, source);
  auto options = models::resnet_options(m.builder);
  options.num_classes(argument<int64_t>(args, "num_classes", 1000, source,
                                        [](const Json& v, const std::string& f) { return v.as_int(f); }));
  options.zero_init_residual(argument<bool>(args, "zero_init_residual", false, source,
                                            [](const Json& v, const std::string& f) { return v.as_bool(f); }));
  // groups and width_per_group are fixed by the builder (torchvision's _ovewrite_named_param).
  for (const auto& [key, fixed] : {std::pair<std::string, int64_t>{"groups", options.groups()},
                                   std::pair<std::string, int64_t>{"width_per_group", options.width_per_group()}}) {
    const auto given = argument<int64_t>(args, key, fixed, source, [](const Json& v, const std::string& f) { return v.as_int(f); });
    TORCH_CHECK_VALUE(given == fixed, file(source), ": field 'builder_args.", key, "' is ", given, " but ", m.builder,
                      " has ", key, "=", fixed);
  }
  const auto dilation = argument<std::vector<bool>>(
      args, "replace_stride_with_dilation", {false, false, false}, source, [](const Json& v, const std::string& f) {
        std::vector<bool> out;
        for (const auto& item : v.as_array(f)) out.push_back(item.as_bool(f + "[]"));
        return out;
      });
  TORCH_CHECK_VALUE(dilation.size() == 3, file(source), ": field 'builder_args.replace_stride_with_dilation' must hold ",
                    "3 booleans (layer2..layer4), not ", dilation.size());
  options.replace_stride_with_dilation(dilation);
  const auto norm = argument<std::string>(args, "norm_layer", "BatchNorm2d", source,
                                          [](const Json& v, const std::string& f) { return v.as_string(f); });
  // SyncBatchNorm is BatchNorm2d outside a data-parallel run (as in torch.nn).
  TORCH_CHECK_VALUE(norm == "BatchNorm2d" || norm == "SyncBatchNorm" || norm == "FrozenBatchNorm2d", file(source),
                    ": field 'builder_args.norm_layer' is '", norm,
                    "'; expected 'BatchNorm2d', 'SyncBatchNorm' or 'FrozenBatchNorm2d'");
  options.norm_layer(norm == "FrozenBatchNorm2d" ? models::NormLayer::FrozenBatchNorm2d : models::NormLayer::BatchNorm2d);
  // torchvision's BasicBlock refuses dilation; say so naming the field rather than the block.
  const bool basic = options.block() == models::BlockType::Basic;
  TORCH_CHECK_VALUE(!basic || std::none_of(dilation.begin(), dilation.end(), [](bool d) { return d; }), file(source),
                    ": field 'builder_args.replace_stride_with_dilation' asks for dilation, which ", m.builder,
                    "'s BasicBlock does not support");
  return options;
}

struct SegmentationArgs {
  int64_t num_classes;
  bool aux_loss;
};

SegmentationArgs segmentation_args_of(const ModelMetadata& m, const std::string& source) {
  const Json& args = m.builder_args;
  check_arguments(args, {"num_classes", "aux_loss"}, m.builder, source);
  return {argument<int64_t>(args, "num_classes", 21, source, [](const Json& v, const std::string& f) { return v.as_int(f); }),
          argument<bool>(args, "aux_loss", false, source, [](const Json& v, const std::string& f) { return v.as_bool(f); })};
}

std::shared_ptr<torch::nn::Module> build_segmentation(const ModelMetadata& m, const std::string& source) {
  const auto [num_classes, aux_loss] = segmentation_args_of(m, source);
  const auto split = m.builder.find('_');
  const auto kind = m.builder.substr(0, split), backbone = m.builder.substr(split + 1);
  if (kind == "deeplabv3") return models::deeplabv3_resnet(backbone, num_classes, aux_loss).ptr();
  return models::fcn_resnet(backbone, num_classes, aux_loss).ptr();
}

// The head weight whose rows are the class count.
std::string head_key(const std::string& task) { return task == "segmentation" ? "classifier.4.weight" : "fc.weight"; }

}  // namespace

std::optional<std::string> builder_task(const std::string& builder) {
  if (contains(models::resnet_architectures(), builder)) return "classification";
  if (contains(segmentation_builders(), builder)) return "segmentation";
  return std::nullopt;
}

void check_builder_args(const ModelMetadata& metadata, const std::string& source) {
  const auto task = builder_task(metadata.builder);
  std::vector<std::string> known = models::resnet_architectures();
  known.insert(known.end(), segmentation_builders().begin(), segmentation_builders().end());
  TORCH_CHECK_VALUE(task.has_value(), file(source), ": field 'builder' is '", metadata.builder,
                    "', which torchtl's C++ library does not build (it builds ", c10::Join(", ", known), ")");
  if (*task == "segmentation") segmentation_args_of(metadata, source);
  else resnet_options_of(metadata, source);
}

std::shared_ptr<torch::nn::Module> build_model(const ModelMetadata& metadata, const std::string& source) {
  check_builder_args(metadata, source);
  if (metadata.task == "segmentation") return build_segmentation(metadata, source);
  return models::ResNet(resnet_options_of(metadata, source)).ptr();
}

ModelFile read_model_file(const std::string& path, const LoadModelOptions& options) {
  ModelFile out;
  auto& metadata = out.metadata;
  const auto stored = read_model_metadata(path);
  out.weights = read_weights(path);
  const auto& weights = out.weights;
  if (stored) {
    metadata = *stored;
    TORCH_CHECK_VALUE(options.arch().empty() || options.arch() == metadata.builder, file(path), ": field 'builder' is '",
                      metadata.builder, "' but arch='", options.arch(), "' was asked for");
    const auto recorded = metadata.num_classes();
    TORCH_CHECK_VALUE(!options.num_classes() || (recorded && *recorded == *options.num_classes()), file(path),
                      ": field 'builder_args.num_classes' is ",
                      recorded ? std::to_string(*recorded) : std::string("missing"), " but num_classes=",
                      options.num_classes().value_or(0), " was asked for");
  } else {
    TORCH_CHECK_VALUE(!options.arch().empty(), "'", path, "' has no torchtl metadata (no ", kModelRecord,
                      ": a bare state dict, or a file of an earlier torchtl); name its builder: ",
                      "load_model(path, arch=\"resnet50\", num_classes=2)");
    const auto task = builder_task(options.arch());
    TORCH_CHECK_VALUE(task.has_value(), "'", path, "': arch='", options.arch(), "' is not a builder torchtl's C++ ",
                      "library builds");
    metadata.task = *task;
    metadata.builder = options.arch();
    const auto num_classes = options.num_classes() ? options.num_classes() : head_num_classes(weights, head_key(*task));
    if (num_classes) metadata.builder_args.set("num_classes", Json(*num_classes));
    if (*task == "segmentation") {
      const bool aux = std::any_of(weights.begin(), weights.end(),
                                   [](const auto& w) { return w.first.rfind("aux_classifier.", 0) == 0; });
      metadata.builder_args.set("aux_loss", Json(aux));
    }
    metadata.transform = default_eval_transform(*task);
    check_model_metadata(metadata, path);
  }
  // Builders of Python's own (torchtl.model_file.BUILDER_MODULES) are checked by Python's builder.
  if (builder_task(metadata.builder)) check_builder_args(metadata, path);
  const auto recorded = metadata.num_classes();
  const auto head = head_num_classes(weights, head_key(metadata.task));
  TORCH_CHECK_VALUE(!recorded || !head || *recorded == *head, file(path), ": field 'builder_args.num_classes' is ",
                    recorded.value_or(0), " but the weights' ", head_key(metadata.task), " has ", head.value_or(0),
                    " rows");
  return out;
}

}  // namespace torchtl::io

namespace torchtl {

torch::Tensor LoadedModel::forward(const torch::Tensor& batch) const {
  auto* container = dynamic_cast<models::EditableContainer*>(module.get());
  TORCH_CHECK(container != nullptr, "LoadedModel: ", module->name(), " has no tensor forward");
  return container->forward_as_tensor(batch);
}

LoadedModel load_model(const std::string& path, const LoadModelOptions& options) {
  auto file = io::read_model_file(path, options);
  LoadedModel out{io::build_model(file.metadata, path), std::move(file.metadata)};
  try {
    io::load_state_dict(*out.module, file.weights, /*strict=*/true);
  } catch (const c10::ValueError& e) {
    TORCH_CHECK_VALUE(false, "model file '", path, "': the weights do not fit field 'builder' '", out.metadata.builder,
                      "' with field 'builder_args' ", out.metadata.builder_args.dump(), ": ", e.what_without_backtrace());
  }
  out.module->eval();
  return out;
}

}  // namespace torchtl
