#include "models/module_tree.h"

#include "models/fold_bn.h"
#include "models/norm.h"
#include "models/sync_batch_norm.h"

#include <c10/util/Exception.h>

namespace torchtl::models {
namespace {

namespace nn = torch::nn;

template <size_t D>
std::vector<int64_t> to_vector(const torch::ExpandingArray<D>& array) {
  return std::vector<int64_t>(array->begin(), array->end());
}

std::string short_type_name(const nn::Module& module) {
  // "torchtl::models::BasicBlockImpl" -> "BasicBlock", "torch::nn::Conv2dImpl" -> "Conv2d".
  std::string name = module.name();
  auto colon = name.rfind("::");
  if (colon != std::string::npos) name = name.substr(colon + 2);
  if (name.size() > 4 && name.compare(name.size() - 4, 4, "Impl") == 0) name.resize(name.size() - 4);
  return name;
}

const OptionValue& option(const std::string& type, const ModuleOptions& options, const std::string& key) {
  auto it = options.find(key);
  TORCH_CHECK_VALUE(it != options.end(), type, ": missing option '", key, "'");
  return it->second;
}

int64_t int_option(const std::string& type, const ModuleOptions& options, const std::string& key, std::optional<int64_t> fallback = std::nullopt) {
  if (fallback && !options.count(key)) return *fallback;
  const auto& value = option(type, options, key);
  TORCH_CHECK_TYPE(std::holds_alternative<int64_t>(value), type, ": option '", key, "' must be an int");
  return std::get<int64_t>(value);
}

bool bool_option(const std::string& type, const ModuleOptions& options, const std::string& key, bool fallback) {
  if (!options.count(key)) return fallback;
  const auto& value = option(type, options, key);
  TORCH_CHECK_TYPE(std::holds_alternative<bool>(value), type, ": option '", key, "' must be a bool");
  return std::get<bool>(value);
}

double float_option(const std::string& type, const ModuleOptions& options, const std::string& key, double fallback) {
  if (!options.count(key)) return fallback;
  const auto& value = option(type, options, key);
  if (std::holds_alternative<int64_t>(value)) return static_cast<double>(std::get<int64_t>(value));
  TORCH_CHECK_TYPE(std::holds_alternative<double>(value), type, ": option '", key, "' must be a float");
  return std::get<double>(value);
}

template <size_t D>
torch::ExpandingArray<D> array_option(const std::string& type, const ModuleOptions& options, const std::string& key,
                                      std::optional<int64_t> fallback = std::nullopt) {
  if (fallback && !options.count(key)) return torch::ExpandingArray<D>(*fallback);
  const auto& value = option(type, options, key);
  if (std::holds_alternative<int64_t>(value)) return torch::ExpandingArray<D>(std::get<int64_t>(value));
  TORCH_CHECK_TYPE(std::holds_alternative<std::vector<int64_t>>(value), type, ": option '", key,
                   "' must be an int or a tuple of ints");
  const auto& values = std::get<std::vector<int64_t>>(value);
  TORCH_CHECK_VALUE(values.size() == D, type, ": option '", key, "' needs ", D, " values, got ", values.size());
  return torch::ExpandingArray<D>(c10::IntArrayRef(values));
}

// Module has no setter for a registered parameter; its registry is protected, so reach it here.
struct ParameterRegistry : nn::Module {
  static torch::OrderedDict<std::string, torch::Tensor>& of(nn::Module& m) { return m.*(&ParameterRegistry::parameters_); }
};

// The typed members that forward() reads, kept in step with the registry.
void update_member(nn::Module& module, const std::string& name, const torch::Tensor& tensor) {
  auto set = [&](auto* impl) {
    if (name == "weight") impl->weight = tensor;
    else if (name == "bias") impl->bias = tensor;
  };
  if (auto* conv = dynamic_cast<nn::Conv2dImpl*>(&module)) set(conv);
  else if (auto* linear = dynamic_cast<nn::LinearImpl*>(&module)) set(linear);
  else if (auto* bn = dynamic_cast<nn::BatchNorm2dImpl*>(&module)) set(bn);
  else if (auto* gn = dynamic_cast<nn::GroupNormImpl*>(&module)) set(gn);
  else if (auto* deconv = dynamic_cast<nn::ConvTranspose2dImpl*>(&module)) set(deconv);
}

void check_shape(const nn::Module& module, const char* kind, const std::string& name, const torch::Tensor& own,
                 const torch::Tensor& given) {
  TORCH_CHECK_VALUE(!own.defined() || own.sizes() == given.sizes(), module.name(), ": ", kind, " '", name,
                    "' has shape ", own.sizes(), ", got ", given.sizes());
}

}  // namespace

namespace {

// Sequential::forward, with every Conv2d directly followed by a BatchNorm2d (and a ReLU) run
// as one folded convolution (FoldedConvBN::run_layers); `folds` has one per position.
torch::Tensor forward_folding(nn::SequentialImpl& seq, std::vector<FoldedConvBN>& folds, torch::Tensor x) {
  const auto layers = seq.children();
  for (size_t i = 0; i < layers.size();) {
    const size_t ran = folds[i].run_layers(layers, i, layers.size(), x);
    if (ran == 0) x = (seq.begin() + static_cast<std::ptrdiff_t>(i))->forward<torch::Tensor>(x);
    i += ran == 0 ? 1 : ran;
  }
  return x;
}

}  // namespace

void set_training_flags(nn::Module& root, const std::vector<bool>& flags) {
  // Pre-order, so each module ends with its own flag after its parent's recursive train().
  auto modules = root.modules(/*include_self=*/true);
  TORCH_CHECK_VALUE(flags.size() == modules.size(), "set_training_flags: ", flags.size(), " flags for ",
                    modules.size(), " modules");
  for (size_t i = 0; i < modules.size(); ++i) modules[i]->train(flags[i]);
}

TensorForward tensor_forward(const std::shared_ptr<nn::Module>& module) {
  TORCH_CHECK_VALUE(module != nullptr, "tensor_forward: no module");
  if (auto container = std::dynamic_pointer_cast<EditableContainer>(module)) {
    return [container](const torch::Tensor& x) { return container->forward_as_tensor(x); };
  }
  if (auto seq = std::dynamic_pointer_cast<nn::SequentialImpl>(module)) {
    // torchvision's heads are Sequentials of Conv2d, BatchNorm2d and ReLU: each such pair (or
    // triple) runs as one folded convolution where the fast path allows (fold_bn.h).
    auto folds = std::make_shared<std::vector<FoldedConvBN>>(seq->size());
    return [seq, folds](const torch::Tensor& x) {
      return folds->size() == seq->size() ? forward_folding(*seq, *folds, x) : seq->forward(x);
    };
  }
#define TORCHTL_LEAF_FORWARD(Impl) \
  if (auto leaf = std::dynamic_pointer_cast<nn::Impl>(module)) return [leaf](const torch::Tensor& x) { return leaf->forward(x); };
  TORCHTL_LEAF_FORWARD(Conv2dImpl)
  TORCHTL_LEAF_FORWARD(BatchNorm2dImpl)
  if (auto leaf = std::dynamic_pointer_cast<FrozenBatchNorm2dImpl>(module)) return [leaf](const torch::Tensor& x) { return leaf->forward(x); };
  if (auto leaf = std::dynamic_pointer_cast<SyncBatchNormImpl>(module)) return [leaf](const torch::Tensor& x) { return leaf->forward(x); };
  TORCHTL_LEAF_FORWARD(LinearImpl)
  TORCHTL_LEAF_FORWARD(ReLUImpl)
  TORCHTL_LEAF_FORWARD(MaxPool2dImpl)
  TORCHTL_LEAF_FORWARD(AdaptiveAvgPool2dImpl)
  TORCHTL_LEAF_FORWARD(DropoutImpl)
  TORCHTL_LEAF_FORWARD(IdentityImpl)
  TORCHTL_LEAF_FORWARD(FlattenImpl)
  TORCHTL_LEAF_FORWARD(SigmoidImpl)
  TORCHTL_LEAF_FORWARD(SoftmaxImpl)
  TORCHTL_LEAF_FORWARD(LogSoftmaxImpl)
  TORCHTL_LEAF_FORWARD(TanhImpl)
  TORCHTL_LEAF_FORWARD(UpsampleImpl)
  TORCHTL_LEAF_FORWARD(AdaptiveMaxPool2dImpl)
  TORCHTL_LEAF_FORWARD(Dropout2dImpl)
  TORCHTL_LEAF_FORWARD(GroupNormImpl)
  if (auto leaf = std::dynamic_pointer_cast<nn::ConvTranspose2dImpl>(module)) {
    return [leaf](const torch::Tensor& x) { return leaf->forward(x); };
  }
#undef TORCHTL_LEAF_FORWARD
  TORCH_CHECK_TYPE(false, "torchtl cannot run a ", module->name(), " as a tensor-to-tensor module");
}

nn::AnyModule to_any_module(const std::shared_ptr<nn::Module>& module) {
#define TORCHTL_LEAF_ANY(Impl) \
  if (auto leaf = std::dynamic_pointer_cast<nn::Impl>(module)) return nn::AnyModule(leaf);
  TORCHTL_LEAF_ANY(Conv2dImpl)
  TORCHTL_LEAF_ANY(BatchNorm2dImpl)
  if (auto leaf = std::dynamic_pointer_cast<FrozenBatchNorm2dImpl>(module)) return nn::AnyModule(leaf);
  if (auto leaf = std::dynamic_pointer_cast<SyncBatchNormImpl>(module)) return nn::AnyModule(leaf);
  TORCHTL_LEAF_ANY(LinearImpl)
  TORCHTL_LEAF_ANY(ReLUImpl)
  TORCHTL_LEAF_ANY(MaxPool2dImpl)
  TORCHTL_LEAF_ANY(AdaptiveAvgPool2dImpl)
  TORCHTL_LEAF_ANY(DropoutImpl)
  TORCHTL_LEAF_ANY(IdentityImpl)
  TORCHTL_LEAF_ANY(FlattenImpl)
  TORCHTL_LEAF_ANY(SigmoidImpl)
  TORCHTL_LEAF_ANY(SoftmaxImpl)
  TORCHTL_LEAF_ANY(LogSoftmaxImpl)
  TORCHTL_LEAF_ANY(TanhImpl)
  TORCHTL_LEAF_ANY(UpsampleImpl)
  TORCHTL_LEAF_ANY(AdaptiveMaxPool2dImpl)
  TORCHTL_LEAF_ANY(Dropout2dImpl)
  TORCHTL_LEAF_ANY(GroupNormImpl)
  TORCHTL_LEAF_ANY(ConvTranspose2dImpl)
#undef TORCHTL_LEAF_ANY
  TORCH_CHECK_TYPE(false, "a torch::nn::Sequential element can be replaced by a torch.nn layer (Conv2d, BatchNorm2d, FrozenBatchNorm2d, ",
                   "Linear, ReLU, MaxPool2d, AdaptiveAvgPool2d, Dropout, Identity, Flatten, Sigmoid, Softmax, ",
                   "LogSoftmax, Tanh, Upsample, AdaptiveMaxPool2d, Dropout2d, GroupNorm, ConvTranspose2d), not by a ",
                   module ? module->name() : std::string("nothing"));
}

void replace_child(nn::Module& parent, const std::string& name, std::shared_ptr<nn::Module> module) {
  if (auto* container = dynamic_cast<EditableContainer*>(&parent)) {
    container->replace_child(name, std::move(module));
    return;
  }
  if (auto* seq = dynamic_cast<nn::SequentialImpl*>(&parent)) {
    size_t index = 0;
    try {
      index = std::stoul(name);
    } catch (const std::exception&) {
      TORCH_CHECK_INDEX(false, "Sequential children are named by index, got '", name, "'");
    }
    TORCH_CHECK_INDEX(index < seq->size(), "index ", index, " is out of range for a Sequential of ", seq->size());
    // Sequential has no setter, but its iterator hands out the stored AnyModule by reference.
    *(seq->begin() + static_cast<std::ptrdiff_t>(index)) = to_any_module(module);
    seq->replace_module(name, module);
    return;
  }
  TORCH_CHECK_TYPE(false, "cannot replace children of a ", parent.name());
}

ModuleInfo module_info(const nn::Module& module) {
  ModuleInfo info{short_type_name(module), {}, ""};
  if (dynamic_cast<const nn::SequentialImpl*>(&module)) info.container = "Sequential";
  if (dynamic_cast<const nn::ModuleListImpl*>(&module)) info.container = "ModuleList";
  auto& o = info.options;
  if (auto* conv = dynamic_cast<const nn::Conv2dImpl*>(&module)) {
    const auto& opt = conv->options;
    TORCH_CHECK_TYPE(std::holds_alternative<torch::ExpandingArray<2>>(opt.padding()),
                     "Conv2d with string padding is not supported");
    TORCH_CHECK_TYPE(std::holds_alternative<torch::enumtype::kZeros>(opt.padding_mode()),
                     "Conv2d with padding_mode other than zeros is not supported");
    o["in_channels"] = opt.in_channels();
    o["out_channels"] = opt.out_channels();
    o["kernel_size"] = to_vector(opt.kernel_size());
    o["stride"] = to_vector(opt.stride());
    o["padding"] = to_vector(std::get<torch::ExpandingArray<2>>(opt.padding()));
    o["dilation"] = to_vector(opt.dilation());
    o["groups"] = opt.groups();
    o["bias"] = opt.bias();
  } else if (auto* bn = dynamic_cast<const nn::BatchNorm2dImpl*>(&module)) {
    const auto& opt = bn->options;
    o["num_features"] = opt.num_features();
    o["eps"] = opt.eps();
    if (opt.momentum()) o["momentum"] = *opt.momentum();  // absent: cumulative average, torch.nn's None
    o["affine"] = opt.affine();
    o["track_running_stats"] = opt.track_running_stats();
  } else if (auto* frozen = dynamic_cast<const FrozenBatchNorm2dImpl*>(&module)) {
    o["num_features"] = frozen->num_features;
    o["eps"] = frozen->eps;
  } else if (auto* linear = dynamic_cast<const nn::LinearImpl*>(&module)) {
    o["in_features"] = linear->options.in_features();
    o["out_features"] = linear->options.out_features();
    o["bias"] = linear->options.bias();
  } else if (auto* relu = dynamic_cast<const nn::ReLUImpl*>(&module)) {
    o["inplace"] = relu->options.inplace();
  } else if (auto* pool = dynamic_cast<const nn::MaxPool2dImpl*>(&module)) {
    o["kernel_size"] = to_vector(pool->options.kernel_size());
    o["stride"] = to_vector(pool->options.stride());
    o["padding"] = to_vector(pool->options.padding());
    o["dilation"] = to_vector(pool->options.dilation());
    o["ceil_mode"] = pool->options.ceil_mode();
  } else if (auto* avg = dynamic_cast<const nn::AdaptiveAvgPool2dImpl*>(&module)) {
    std::vector<int64_t> size;
    for (const auto& s : *avg->options.output_size()) {
      TORCH_CHECK_TYPE(s.has_value(), "AdaptiveAvgPool2d with a None output size is not supported");
      size.push_back(*s);
    }
    o["output_size"] = size;
  } else if (auto* dropout = dynamic_cast<const nn::DropoutImpl*>(&module)) {
    o["p"] = dropout->options.p();
    o["inplace"] = dropout->options.inplace();
  } else if (auto* flatten = dynamic_cast<const nn::FlattenImpl*>(&module)) {
    o["start_dim"] = flatten->options.start_dim();
    o["end_dim"] = flatten->options.end_dim();
  } else if (auto* softmax = dynamic_cast<const nn::SoftmaxImpl*>(&module)) {
    o["dim"] = softmax->options.dim();
  } else if (auto* log_softmax = dynamic_cast<const nn::LogSoftmaxImpl*>(&module)) {
    o["dim"] = log_softmax->options.dim();
  } else if (auto* up = dynamic_cast<const nn::UpsampleImpl*>(&module)) {
    const auto& opt = up->options;
    TORCH_CHECK_TYPE(opt.scale_factor() && !opt.size(), "Upsample is supported with a scale_factor, not a size");
    const auto& scale = *opt.scale_factor();
    TORCH_CHECK_TYPE(scale.size() == 2 && scale[0] == scale[1], "Upsample needs one scale_factor for both sides");
    o["scale_factor"] = scale[0];
    // "kBilinear" -> torch.nn's "bilinear".
    auto mode = torch::enumtype::get_enum_name(opt.mode()).substr(1);
    mode[0] = static_cast<char>(std::tolower(mode[0]));
    o["mode"] = mode;
    if (opt.align_corners()) o["align_corners"] = *opt.align_corners();
  } else if (auto* max_pool = dynamic_cast<const nn::AdaptiveMaxPool2dImpl*>(&module)) {
    std::vector<int64_t> size;
    for (const auto& s : *max_pool->options.output_size()) {
      TORCH_CHECK_TYPE(s.has_value(), "AdaptiveMaxPool2d with a None output size is not supported");
      size.push_back(*s);
    }
    o["output_size"] = size;
  } else if (auto* dropout2d = dynamic_cast<const nn::Dropout2dImpl*>(&module)) {
    o["p"] = dropout2d->options.p();
    o["inplace"] = dropout2d->options.inplace();
  } else if (auto* gn = dynamic_cast<const nn::GroupNormImpl*>(&module)) {
    o["num_groups"] = gn->options.num_groups();
    o["num_channels"] = gn->options.num_channels();
    o["eps"] = gn->options.eps();
    o["affine"] = gn->options.affine();
  } else if (auto* deconv = dynamic_cast<const nn::ConvTranspose2dImpl*>(&module)) {
    const auto& opt = deconv->options;
    TORCH_CHECK_TYPE(std::holds_alternative<torch::ExpandingArray<2>>(opt.padding()),
                     "ConvTranspose2d with string padding is not supported");
    o["in_channels"] = opt.in_channels();
    o["out_channels"] = opt.out_channels();
    o["kernel_size"] = to_vector(opt.kernel_size());
    o["stride"] = to_vector(opt.stride());
    o["padding"] = to_vector(std::get<torch::ExpandingArray<2>>(opt.padding()));
    o["output_padding"] = to_vector(opt.output_padding());
    o["dilation"] = to_vector(opt.dilation());
    o["groups"] = opt.groups();
    o["bias"] = opt.bias();
  }
  return info;
}

std::shared_ptr<nn::Module> make_module(const std::string& type, const ModuleOptions& o) {
  if (type == "Conv2d") {
    return nn::Conv2d(nn::Conv2dOptions(int_option(type, o, "in_channels"), int_option(type, o, "out_channels"),
                                        array_option<2>(type, o, "kernel_size"))
                          .stride(array_option<2>(type, o, "stride", 1))
                          .padding(array_option<2>(type, o, "padding", 0))
                          .dilation(array_option<2>(type, o, "dilation", 1))
                          .groups(int_option(type, o, "groups", 1))
                          .bias(bool_option(type, o, "bias", true)))
        .ptr();
  }
  if (type == "BatchNorm2d") {
    nn::BatchNorm2dOptions opt(int_option(type, o, "num_features"));
    opt.eps(float_option(type, o, "eps", 1e-5))
        .affine(bool_option(type, o, "affine", true))
        .track_running_stats(bool_option(type, o, "track_running_stats", true));
    opt.momentum(o.count("momentum") ? std::optional<double>(float_option(type, o, "momentum", 0.1)) : std::nullopt);
    return nn::BatchNorm2d(opt).ptr();
  }
  if (type == "FrozenBatchNorm2d") {
    return FrozenBatchNorm2d(int_option(type, o, "num_features"), float_option(type, o, "eps", 1e-5)).ptr();
  }
  if (type == "Linear") {
    return nn::Linear(nn::LinearOptions(int_option(type, o, "in_features"), int_option(type, o, "out_features"))
                          .bias(bool_option(type, o, "bias", true)))
        .ptr();
  }
  if (type == "ReLU") return nn::ReLU(nn::ReLUOptions(bool_option(type, o, "inplace", false))).ptr();
  if (type == "MaxPool2d") {
    auto kernel = array_option<2>(type, o, "kernel_size");
    return nn::MaxPool2d(nn::MaxPool2dOptions(kernel)
                             .stride(o.count("stride") ? array_option<2>(type, o, "stride") : kernel)
                             .padding(array_option<2>(type, o, "padding", 0))
                             .dilation(array_option<2>(type, o, "dilation", 1))
                             .ceil_mode(bool_option(type, o, "ceil_mode", false)))
        .ptr();
  }
  if (type == "AdaptiveAvgPool2d") {
    auto size = array_option<2>(type, o, "output_size");
    return nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({(*size)[0], (*size)[1]})).ptr();
  }
  if (type == "Dropout") {
    return nn::Dropout(nn::DropoutOptions(float_option(type, o, "p", 0.5)).inplace(bool_option(type, o, "inplace", false))).ptr();
  }
  if (type == "Identity") return nn::Identity().ptr();
  if (type == "Flatten") {
    return nn::Flatten(nn::FlattenOptions().start_dim(int_option(type, o, "start_dim", 1)).end_dim(int_option(type, o, "end_dim", -1))).ptr();
  }
  if (type == "Sigmoid") return nn::Sigmoid().ptr();
  if (type == "Tanh") return nn::Tanh().ptr();
  if (type == "Softmax") return nn::Softmax(int_option(type, o, "dim")).ptr();
  if (type == "LogSoftmax") return nn::LogSoftmax(int_option(type, o, "dim")).ptr();
  if (type == "Upsample") {
    nn::UpsampleOptions opt;
    const double scale = float_option(type, o, "scale_factor", 1.0);
    opt.scale_factor(std::vector<double>{scale, scale});
    const auto mode = o.count("mode") ? std::get<std::string>(option(type, o, "mode")) : std::string("nearest");
    if (mode == "nearest") opt.mode(torch::kNearest);
    else if (mode == "bilinear") opt.mode(torch::kBilinear);
    else if (mode == "bicubic") opt.mode(torch::kBicubic);
    else TORCH_CHECK_VALUE(false, "Upsample: mode '", mode, "' is not supported (nearest, bilinear, bicubic)");
    if (o.count("align_corners")) opt.align_corners(bool_option(type, o, "align_corners", false));
    return nn::Upsample(opt).ptr();
  }
  if (type == "AdaptiveMaxPool2d") {
    auto size = array_option<2>(type, o, "output_size");
    return nn::AdaptiveMaxPool2d(nn::AdaptiveMaxPool2dOptions({(*size)[0], (*size)[1]})).ptr();
  }
  if (type == "Dropout2d") {
    return nn::Dropout2d(nn::Dropout2dOptions(float_option(type, o, "p", 0.5)).inplace(bool_option(type, o, "inplace", false))).ptr();
  }
  if (type == "GroupNorm") {
    return nn::GroupNorm(nn::GroupNormOptions(int_option(type, o, "num_groups"), int_option(type, o, "num_channels"))
                             .eps(float_option(type, o, "eps", 1e-5))
                             .affine(bool_option(type, o, "affine", true)))
        .ptr();
  }
  if (type == "ConvTranspose2d") {
    return nn::ConvTranspose2d(nn::ConvTranspose2dOptions(int_option(type, o, "in_channels"), int_option(type, o, "out_channels"),
                                                          array_option<2>(type, o, "kernel_size"))
                                   .stride(array_option<2>(type, o, "stride", 1))
                                   .padding(array_option<2>(type, o, "padding", 0))
                                   .output_padding(array_option<2>(type, o, "output_padding", 0))
                                   .dilation(array_option<2>(type, o, "dilation", 1))
                                   .groups(int_option(type, o, "groups", 1))
                                   .bias(bool_option(type, o, "bias", true)))
        .ptr();
  }
  TORCH_CHECK_TYPE(false, "torchtl cannot build a C++ ", type,
                   "; supported: Conv2d, BatchNorm2d, FrozenBatchNorm2d, Linear, ReLU, MaxPool2d, AdaptiveAvgPool2d, Dropout, Identity, Flatten, ",
                   "Sigmoid, Softmax, LogSoftmax, Tanh, Upsample, AdaptiveMaxPool2d, Dropout2d, GroupNorm, ConvTranspose2d, Sequential");
}

void adopt_tensors(nn::Module& module, const std::vector<std::pair<std::string, torch::Tensor>>& parameters,
                   const std::vector<std::pair<std::string, torch::Tensor>>& buffers) {
  auto& registry = ParameterRegistry::of(module);
  for (const auto& [name, tensor] : parameters) {
    torch::Tensor* slot = registry.find(name);
    TORCH_CHECK_VALUE(slot != nullptr, module.name(), " has no parameter '", name, "'");
    check_shape(module, "parameter", name, *slot, tensor);
    *slot = tensor;
    update_member(module, name, tensor);
  }
  // Buffers are private to Module. Sharing the storage (set_data) is as good as identity for
  // them: BatchNorm updates its running statistics in place, and nobody takes their gradient.
  auto own_buffers = module.named_buffers(/*recurse=*/false);
  for (const auto& [name, tensor] : buffers) {
    torch::Tensor* slot = own_buffers.find(name);
    TORCH_CHECK_VALUE(slot != nullptr, module.name(), " has no buffer '", name, "'");
    check_shape(module, "buffer", name, *slot, tensor);
    if (!slot->is_same(tensor)) slot->set_data(tensor);
  }
}

}  // namespace torchtl::models
