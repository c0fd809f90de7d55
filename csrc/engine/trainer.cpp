#include "engine/trainer.h"

#include <ATen/autocast_mode.h>
#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <optional>
#include <tuple>
#include <filesystem>
#include <set>
#include <unordered_map>

#include "engine/metrics.h"
#include "engine/schedule.h"
#include "io/weights.h"
#include "models/module_tree.h"
#include "models/resnet.h"
#include "models/segmentation.h"

namespace torchtl::engine {

namespace nn = torch::nn;
namespace F = torch::nn::functional;
using Clock = std::chrono::steady_clock;

torch::Device resolve_device(const std::string& device) {
  if (device.empty()) return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  torch::Device d(device);
  TORCH_CHECK_VALUE(!d.is_cuda() || torch::cuda::is_available(), "device '", device, "' asked for, but CUDA is not available");
  return d;
}

namespace {

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// The model as the loops see it: the whole forward, and for feature extraction the frozen part
// and the head separately.
struct ModelView {
  std::shared_ptr<nn::Module> root;
  models::ResNetImpl* resnet = nullptr;
  models::SegmentationModelImpl* segmentation = nullptr;
  models::TensorForward forward_any;

  ModelView(const std::shared_ptr<nn::Module>& model, const std::string& task) : root(model) {
    TORCH_CHECK_VALUE(model != nullptr, "fit/evaluate need a model");
    resnet = dynamic_cast<models::ResNetImpl*>(model.get());
    segmentation = dynamic_cast<models::SegmentationModelImpl*>(model.get());
    if (task == "segmentation") {
      TORCH_CHECK_VALUE(segmentation != nullptr, "task='segmentation' needs an FCN or DeepLabV3 model, got ", model->name());
    } else {
      TORCH_CHECK_VALUE(task == "classification", "unknown task '", task, "'; choose classification or segmentation");
      TORCH_CHECK_VALUE(segmentation == nullptr, "a segmentation model needs task='segmentation'");
      forward_any = models::tensor_forward(model);
    }
  }

  // The classifier heads: the only modules that train in feature_extractor mode, and the
  // head_lr parameter group in every mode. Empty for models torchtl does not know the head of.
  std::vector<std::shared_ptr<nn::Module>> heads() const {
    std::vector<std::shared_ptr<nn::Module>> out;
    for (const auto& child : root->named_children()) {
      const auto& name = child.key();
      if ((resnet && name == "fc") || (segmentation && (name == "classifier" || name == "aux_classifier"))) {
        out.push_back(child.value());
      }
    }
    return out;
  }
};

std::set<const c10::TensorImpl*> parameters_of(const std::vector<std::shared_ptr<nn::Module>>& modules) {
  std::set<const c10::TensorImpl*> out;
  for (const auto& m : modules) {
    for (const auto& p : m->parameters()) out.insert(p.unsafeGetTensorImpl());
  }
  return out;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const FitOptions& o, std::vector<torch::Tensor> body,
                                                         std::vector<torch::Tensor> head, std::vector<double>& base_lrs) {
  const double head_lr = o.head_lr() >= 0 ? o.head_lr() : o.lr();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto add = [&](std::vector<torch::Tensor> params, double lr, auto options) {
    if (params.empty()) return;
    options.lr(lr);
    groups.emplace_back(std::move(params), std::make_unique<decltype(options)>(options));
    base_lrs.push_back(lr);
  };
  TORCH_CHECK_VALUE(!body.empty() || !head.empty(), "no parameter requires grad: nothing to train");
  if (o.optimizer() == "sgd") {
    auto opt = torch::optim::SGDOptions(o.lr()).momentum(o.momentum()).nesterov(o.nesterov()).weight_decay(o.weight_decay());
    add(std::move(body), o.lr(), opt);
    add(std::move(head), head_lr, opt);
    return std::make_unique<torch::optim::SGD>(std::move(groups), opt);
  }
  if (o.optimizer() == "adam") {
    auto opt = torch::optim::AdamOptions(o.lr()).weight_decay(o.weight_decay());
    add(std::move(body), o.lr(), opt);
    add(std::move(head), head_lr, opt);
    return std::make_unique<torch::optim::Adam>(std::move(groups), opt);
  }
  if (o.optimizer() == "adamw") {
    auto opt = torch::optim::AdamWOptions(o.lr()).weight_decay(o.weight_decay());
    add(std::move(body), o.lr(), opt);
    add(std::move(head), head_lr, opt);
    return std::make_unique<torch::optim::AdamW>(std::move(groups), opt);
  }
  TORCH_CHECK_VALUE(false, "unknown optimizer '", o.optimizer(), "'; choose sgd, adam or adamw");
}

// Optimizer state by parameter name, so a checkpoint is readable from Python and resumable.
c10::impl::GenericDict optimizer_state(torch::optim::Optimizer& optimizer, const std::vector<std::string>& names,
                                       const std::vector<torch::Tensor>& params) {
  c10::impl::GenericDict out(c10::StringType::get(), c10::AnyType::get());
  auto& state = optimizer.state();
  for (size_t i = 0; i < params.size(); ++i) {
    auto it = state.find(params[i].unsafeGetTensorImpl());
    if (it == state.end()) continue;
    c10::impl::GenericDict entry(c10::StringType::get(), c10::AnyType::get());
    if (auto* sgd = dynamic_cast<torch::optim::SGDParamState*>(it->second.get())) {
      entry.insert("momentum_buffer", sgd->momentum_buffer().cpu());
    } else if (auto* adam = dynamic_cast<torch::optim::AdamParamState*>(it->second.get())) {
      entry.insert("step", adam->step());
      entry.insert("exp_avg", adam->exp_avg().cpu());
      entry.insert("exp_avg_sq", adam->exp_avg_sq().cpu());
    } else if (auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(it->second.get())) {
      entry.insert("step", adamw->step());
      entry.insert("exp_avg", adamw->exp_avg().cpu());
      entry.insert("exp_avg_sq", adamw->exp_avg_sq().cpu());
    }
    out.insert(names[i], entry);
  }
  return out;
}

void restore_optimizer_state(torch::optim::Optimizer& optimizer, const std::string& kind, const c10::impl::GenericDict& saved,
                             const std::vector<std::string>& names, const std::vector<torch::Tensor>& params) {
  auto& state = optimizer.state();
  for (size_t i = 0; i < params.size(); ++i) {
    auto it = saved.find(names[i]);
    if (it == saved.end()) continue;
    auto entry = it->value().toGenericDict();
    auto tensor = [&](const char* key) { return entry.at(key).toTensor().to(params[i].device()); };
    void* key = params[i].unsafeGetTensorImpl();
    if (kind == "sgd") {
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(tensor("momentum_buffer"));
      state[key] = std::move(s);
    } else if (kind == "adam") {
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->step(entry.at("step").toInt()).exp_avg(tensor("exp_avg")).exp_avg_sq(tensor("exp_avg_sq"));
      state[key] = std::move(s);
    } else {
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(entry.at("step").toInt()).exp_avg(tensor("exp_avg")).exp_avg_sq(tensor("exp_avg_sq"));
      state[key] = std::move(s);
    }
  }
}

torch::Tensor classification_loss(const torch::Tensor& logits, const torch::Tensor& target, const FitOptions& o) {
  TORCH_CHECK_VALUE(target.dim() == 1, "classification targets must be N class indices, got shape ", target.sizes());
  const auto max_label = target.max().item<int64_t>();
  TORCH_CHECK_VALUE(max_label < logits.size(1), "label ", max_label, " in the data, but the model has ", logits.size(1),
                    " classes (num_classes mismatch between model and data)");
  return F::cross_entropy(logits, target, F::CrossEntropyFuncOptions().label_smoothing(o.label_smoothing()));
}

// The references' criterion: cross entropy on "out" (+ aux_weight x on "aux"), ignoring 255.
torch::Tensor segmentation_loss(const torch::OrderedDict<std::string, torch::Tensor>& out, const torch::Tensor& target,
                                const FitOptions& o) {
  auto ce = [&](const torch::Tensor& x) {
    return F::cross_entropy(x, target, F::CrossEntropyFuncOptions().ignore_index(o.ignore_index()));
  };
  auto loss = ce(out["out"]);
  if (const auto* aux = out.find("aux")) loss = loss + o.aux_weight() * ce(*aux);
  return loss;
}

// Autocast for the forward pass on CUDA (fp16 or bf16); a no-op elsewhere.
struct AutocastScope {
  bool enabled;
  AutocastScope(bool on, at::ScalarType dtype) : enabled(on) {
    if (enabled) {
      at::autocast::set_autocast_enabled(at::kCUDA, true);
      at::autocast::set_autocast_dtype(at::kCUDA, dtype);
    }
  }
  ~AutocastScope() {
    if (enabled) {
      at::autocast::set_autocast_enabled(at::kCUDA, false);
      at::autocast::clear_cache();
    }
  }
};

// torch.amp.GradScaler's algorithm on ATen's own kernels (the C++ frontend has no GradScaler).
struct GradScaler {
  bool enabled = false;
  torch::Tensor scale, growth_tracker, found_inf;
  void init(bool on, torch::Device device) {
    enabled = on;
    if (!on) return;
    scale = torch::full({}, 65536.0, torch::TensorOptions().dtype(torch::kFloat32).device(device));
    growth_tracker = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt32).device(device));
    found_inf = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  }
  torch::Tensor scaled(const torch::Tensor& loss) const { return enabled ? loss * scale : loss; }
  // Unscales the gradients; false when they overflowed (the step is skipped, as GradScaler does).
  bool unscale(const std::vector<torch::Tensor>& params) {
    if (!enabled) return true;
    std::vector<torch::Tensor> grads;
    for (const auto& p : params) {
      if (p.grad().defined()) grads.push_back(p.grad());
    }
    found_inf.zero_();
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, scale.reciprocal());
    return found_inf.item<float>() == 0.0f;
  }
  void update() {
    if (enabled) at::_amp_update_scale_(scale, growth_tracker, found_inf, 2.0, 0.5, 2000);
  }
};

at::ScalarType amp_dtype(const FitOptions& o, torch::Device device, bool& enabled) {
  enabled = o.amp() != "off";
  TORCH_CHECK_VALUE(o.amp() == "off" || o.amp() == "fp16" || o.amp() == "bf16", "amp must be off, fp16 or bf16, got '",
                    o.amp(), "'");
  TORCH_CHECK_VALUE(!enabled || device.is_cuda(), "amp='", o.amp(), "' needs a CUDA device");
  return o.amp() == "bf16" ? at::kBFloat16 : at::kHalf;
}

struct Throttle {
  Clock::time_point last = Clock::now() - std::chrono::seconds(1);
  bool due(bool last_batch) {
    auto now = Clock::now();
    if (!last_batch && now - last < std::chrono::milliseconds(200)) return false;
    last = now;
    return true;
  }
};

// Frozen features by dataset index, with the label: feature_extractor mode computes them once.
using FeatureCache = std::unordered_map<int64_t, std::pair<torch::Tensor, torch::Tensor>>;

// Whether `cache` holds every sample of `loader`'s epoch (a rank's shard changes every epoch).
bool covers(const FeatureCache& cache, const data::ThreadedLoader& loader, uint64_t epoch) {
  if (cache.empty()) return false;
  for (const auto& batch : loader.batch_indices(epoch)) {
    for (auto i : batch) {
      if (!cache.count(i)) return false;
    }
  }
  return true;
}

// One pass over `loader`. With `cache` (a ResNet in feature_extractor mode, deterministic data),
// the frozen features are taken from it when it covers the data set, and stored into it otherwise.
EvalResult run_evaluation(ModelView& view, const data::ThreadedLoader& loader, const FitOptions& o, torch::Device device,
                          const Distributed& distributed, int64_t epoch, const ProgressFn& progress, bool& stopped,
                          FeatureCache* cache = nullptr) {
  torch::NoGradGuard no_grad;
  view.root->eval();
  EvalResult r;
  const auto start = Clock::now();
  std::unique_ptr<ConfusionMatrix> confusion;
  double loss_sum = 0.0;
  int64_t correct1 = 0, correct5 = 0, batch_index = 0;
  Throttle throttle;
  bool amp_on = false;
  const auto dtype = amp_dtype(o, device, amp_on);
  const auto num_batches = static_cast<int64_t>(loader.num_batches());
  const bool from_cache = cache && view.resnet && covers(*cache, loader, 0);
  // Yields the next (input, target, input_is_features) or nothing at the end.
  std::unique_ptr<data::LoaderEpoch> stream;
  std::vector<std::vector<int64_t>> cached_batches;
  size_t next_cached = 0;
  if (from_cache) {
    cached_batches = loader.batch_indices(0);
  } else {
    stream = loader.epoch(0);
  }
  auto next = [&]() -> std::optional<std::tuple<torch::Tensor, torch::Tensor, bool>> {
    if (from_cache) {
      if (next_cached == cached_batches.size()) return std::nullopt;
      std::vector<torch::Tensor> fs, ls;
      for (auto i : cached_batches[next_cached++]) {
        const auto& entry = cache->at(i);
        fs.push_back(entry.first);
        ls.push_back(entry.second);
      }
      return std::make_tuple(torch::stack(fs), torch::stack(ls), true);
    }
    auto batch = stream->next();
    if (!batch) return std::nullopt;
    auto x = batch->fields.at(0).to(device, /*non_blocking=*/true);
    auto y = batch->fields.at(1).to(device, /*non_blocking=*/true);
    if (o.channels_last()) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    if (cache && view.resnet) {
      auto features = view.resnet->forward_features(x);
      for (size_t k = 0; k < batch->indices.size(); ++k) (*cache)[batch->indices[k]] = {features[k], y[k]};
      return std::make_tuple(features, y, true);
    }
    return std::make_tuple(x, y, false);
  };
  while (auto item = next()) {
    auto& [x, y, is_features] = *item;
    const int64_t n = x.size(0);
    torch::Tensor prediction, loss;
    {
      AutocastScope autocast(amp_on, dtype);
      if (view.segmentation) {
        auto out = view.segmentation->forward(x);
        loss = segmentation_loss(out, y, o);
        prediction = out["out"].argmax(1);
        if (!confusion) confusion = std::make_unique<ConfusionMatrix>(out["out"].size(1));
      } else {
        auto logits = is_features ? view.resnet->forward_head(x) : view.forward_any(x);
        loss = classification_loss(logits, y, o);
        auto c = topk_correct(logits, y, {1, 5});
        correct1 += c[0];
        correct5 += c[1];
        prediction = logits.argmax(1);
        if (!confusion) confusion = std::make_unique<ConfusionMatrix>(logits.size(1));
      }
    }
    confusion->update(y, prediction);
    loss_sum += loss.item<double>() * n;
    r.images += n;
    ++batch_index;
    if (progress && throttle.due(batch_index == num_batches)) {
      Progress p{false, epoch, o.epochs(), batch_index, num_batches, r.images, loss_sum / r.images,
                 view.segmentation ? -1.0 : static_cast<double>(correct1) / r.images};
      if (!progress(p)) {
        stopped = true;
        break;
      }
    }
  }
  // The whole validation set's metrics: every rank's counts and confusion matrix, summed. A rank
  // whose shard is empty contributes zeros; one that was stopped stops them all.
  const auto totals = distributed.all_reduce_sum({loss_sum, static_cast<double>(r.images), static_cast<double>(correct1),
                                                  static_cast<double>(correct5), stopped ? 1.0 : 0.0});
  loss_sum = totals[0];
  r.images = static_cast<int64_t>(totals[1]);
  correct1 = static_cast<int64_t>(totals[2]);
  correct5 = static_cast<int64_t>(totals[3]);
  stopped = totals[4] > 0;
  const auto num_classes = distributed.all_reduce_max(confusion ? confusion->num_classes() : 0);
  if (!confusion && num_classes > 0) confusion = std::make_unique<ConfusionMatrix>(num_classes);
  if (confusion) {
    auto matrix = confusion->matrix();  // a handle on the matrix's storage, summed in place
    distributed.all_reduce_sum(matrix);
  }
  TORCH_CHECK_VALUE(r.images > 0, "the evaluation loader yielded no batch (empty map file, or drop_last with fewer ",
                    "samples than batch_size)");
  r.loss = loss_sum / r.images;
  r.seconds = seconds_since(start);
  r.confusion = confusion->matrix();
  if (view.segmentation) {
    auto m = confusion->compute();
    r.pixel_accuracy = m.pixel_accuracy;
    r.mean_iou = m.mean_iou;
    r.iou = m.iou;
  } else {
    r.acc1 = static_cast<double>(correct1) / r.images;
    r.acc5 = static_cast<double>(correct5) / r.images;
  }
  return r;
}

// Everything of a run that a checkpoint must bring back for an exact resume.
struct RunState {
  int64_t epochs_done = 0;
  int64_t iteration = 0;
  double best_metric = -1.0;
  int64_t best_epoch = -1;
};

c10::impl::GenericDict config_of(const FitOptions& o) {
  c10::impl::GenericDict c(c10::StringType::get(), c10::AnyType::get());
  c.insert("task", o.task());
  c.insert("mode", o.mode());
  c.insert("optimizer", o.optimizer());
  c.insert("lr", o.lr());
  c.insert("epochs", o.epochs());
  c.insert("lr_schedule", o.lr_schedule());
  c.insert("seed", static_cast<int64_t>(o.seed()));
  return c;
}

void write_checkpoint(const std::string& path, nn::Module& model, torch::optim::Optimizer& optimizer, const FitOptions& o,
                      const RunState& state, const std::vector<std::string>& names, const std::vector<torch::Tensor>& params) {
  c10::impl::GenericDict ckpt(c10::StringType::get(), c10::AnyType::get());
  ckpt.insert("model", io::to_ivalue(io::state_dict(model)));
  c10::impl::GenericDict opt(c10::StringType::get(), c10::AnyType::get());
  opt.insert("kind", o.optimizer());
  opt.insert("state", optimizer_state(optimizer, names, params));
  ckpt.insert("optimizer", opt);
  ckpt.insert("epoch", state.epochs_done);
  ckpt.insert("iteration", state.iteration);
  ckpt.insert("best_metric", state.best_metric);
  ckpt.insert("best_epoch", state.best_epoch);
  ckpt.insert("rng_state", at::detail::getDefaultCPUGenerator().get_state());
  ckpt.insert("config", config_of(o));
  io::save_pickle(ckpt, path);
}

}  // namespace

FitResult fit(const std::shared_ptr<nn::Module>& model, const data::ThreadedLoader& unsharded_train,
              const data::ThreadedLoader* unsharded_val, const FitOptions& o, const ProgressFn& progress) {
  ModelView view(model, o.task());
  // Each rank trains on an equal share and validates on a disjoint one (exact summed metrics).
  const Distributed distributed(o.process_group(), resolve_device(o.device()));
  const auto train = distributed.shard(unsharded_train, /*pad=*/true);
  std::optional<data::ThreadedLoader> val_shard;
  if (unsharded_val) val_shard = distributed.shard(*unsharded_val, /*pad=*/false);
  const data::ThreadedLoader* val = val_shard ? &*val_shard : nullptr;
  TORCH_CHECK_VALUE(o.mode() == "scratch" || o.mode() == "finetune" || o.mode() == "feature_extractor", "unknown mode '",
                    o.mode(), "'; choose scratch, finetune or feature_extractor");
  TORCH_CHECK_VALUE(o.epochs() > 0, "epochs must be positive, got ", o.epochs());
  const auto iters_per_epoch = static_cast<int64_t>(train.num_batches());
  TORCH_CHECK_VALUE(iters_per_epoch > 0, "the training loader yields no batch (empty map file, or drop_last with fewer ",
                    "samples than batch_size)");
  const auto device = resolve_device(o.device());
  bool amp_on = false;
  const auto dtype = amp_dtype(o, device, amp_on);
  LRSchedule schedule(ScheduleOptions{o.lr_schedule(), o.epochs(), iters_per_epoch, o.step_size(), o.gamma(), 0.9,
                                      o.warmup_epochs(), 0.01});

  // Dropout draws; scratch and finetune differ only in the weights the caller built the model with.
  torch::manual_seed(o.seed());
  const bool extract = o.mode() == "feature_extractor";
  const auto heads = view.heads();
  TORCH_CHECK_VALUE(!extract || !heads.empty(), "feature_extractor mode knows the heads of ResNet, FCN and DeepLabV3 ",
                    "models, not of ", model->name());
  const auto head_params = parameters_of(heads);
  if (extract) {
    for (auto& p : model->parameters()) {
      if (!head_params.count(p.unsafeGetTensorImpl())) p.set_requires_grad(false);
    }
  }
  model->to(device);
  if (o.channels_last() && device.is_cuda()) {
    for (auto& p : model->parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
    }
  }

  std::vector<std::string> names;
  std::vector<torch::Tensor> params, body, head;
  for (const auto& item : model->named_parameters()) {
    if (!item.value().requires_grad()) continue;
    names.push_back(item.key());
    params.push_back(item.value());
    (head_params.count(item.value().unsafeGetTensorImpl()) ? head : body).push_back(item.value());
  }
  std::vector<double> base_lrs;
  auto optimizer = make_optimizer(o, body, head, base_lrs);
  GradScaler scaler;
  scaler.init(amp_on && dtype == at::kHalf, device);

  RunState state;
  if (!o.resume().empty()) {
    auto ckpt = io::load_pickle(o.resume()).toGenericDict();
    io::StateDict weights;
    for (const auto& e : ckpt.at("model").toGenericDict()) weights.emplace_back(e.key().toStringRef(), e.value().toTensor());
    io::load_state_dict(*model, weights, true);
    auto opt = ckpt.at("optimizer").toGenericDict();
    TORCH_CHECK_VALUE(opt.at("kind").toStringRef() == o.optimizer(), "resume: the checkpoint used optimizer '",
                      opt.at("kind").toStringRef(), "', this run asks for '", o.optimizer(), "'");
    restore_optimizer_state(*optimizer, o.optimizer(), opt.at("state").toGenericDict(), names, params);
    state.epochs_done = ckpt.at("epoch").toInt();
    state.iteration = ckpt.at("iteration").toInt();
    state.best_metric = ckpt.at("best_metric").toDouble();
    state.best_epoch = ckpt.at("best_epoch").toInt();
    auto generator = at::detail::getDefaultCPUGenerator();  // a handle on the global generator
    generator.set_state(ckpt.at("rng_state").toTensor());
  }
  // Every rank starts from rank 0's weights, as DistributedDataParallel does.
  std::vector<torch::Tensor> model_state = model->parameters();
  for (const auto& b : model->buffers()) model_state.push_back(b);
  distributed.broadcast(model_state);
  if (!o.checkpoint_dir().empty() && distributed.is_main_process()) std::filesystem::create_directories(o.checkpoint_dir());

  // feature_extractor + deterministic data: the frozen features of each sample never change.
  const bool use_cache = extract && o.cache_features() && view.resnet != nullptr;
  FeatureCache cache, val_cache;

  FitResult result;
  result.best_metric = state.best_metric;
  result.best_epoch = state.best_epoch;
  for (int64_t epoch = state.epochs_done; epoch < o.epochs(); ++epoch) {
    EpochRecord record;
    record.epoch = epoch;
    model->train();
    if (extract) {
      model->eval();
      for (auto& h : heads) h->train();
    }
    const auto start = Clock::now();
    double loss_sum = 0.0;
    int64_t correct = 0, batch_index = 0;
    Throttle throttle;
    const bool from_cache = use_cache && covers(cache, train, static_cast<uint64_t>(epoch));

    auto train_step = [&](const torch::Tensor& input, const torch::Tensor& target, bool input_is_features) {
      const double factor = schedule.factor(state.iteration);
      for (size_t g = 0; g < optimizer->param_groups().size(); ++g) {
        optimizer->param_groups()[g].options().set_lr(base_lrs[g] * factor);
      }
      record.lr = base_lrs.front() * factor;
      optimizer->zero_grad();
      torch::Tensor loss, logits;
      {
        AutocastScope autocast(amp_on, dtype);
        if (view.segmentation) {
          torch::OrderedDict<std::string, torch::Tensor> out;
          if (extract) {
            torch::OrderedDict<std::string, torch::Tensor> features;
            {
              torch::NoGradGuard no_grad;
              features = view.segmentation->backbone->forward(input);
            }
            out = view.segmentation->forward_heads(features, input.sizes().slice(2));
          } else {
            out = view.segmentation->forward(input);
          }
          loss = segmentation_loss(out, target, o);
        } else {
          if (input_is_features) {
            logits = view.resnet->forward_head(input);
          } else if (extract && view.resnet) {
            torch::Tensor features;
            {
              torch::NoGradGuard no_grad;
              features = view.resnet->forward_features(input);
            }
            logits = view.resnet->forward_head(features);
          } else {
            logits = view.forward_any(input);
          }
          loss = classification_loss(logits, target, o);
        }
      }
      scaler.scaled(loss).backward();
      distributed.all_reduce_gradients(params);
      if (scaler.unscale(params)) {
        if (o.clip_grad_norm() > 0) torch::nn::utils::clip_grad_norm_(params, o.clip_grad_norm());
        optimizer->step();
      }
      scaler.update();
      ++state.iteration;
      const double value = loss.item<double>();
      record.step_losses.push_back(value);
      loss_sum += value * input.size(0);
      record.images += input.size(0);
      if (logits.defined()) correct += topk_correct(logits.detach(), target, {1})[0];
    };

    bool stop = false;
    auto report = [&]() {
      ++batch_index;
      if (progress && throttle.due(batch_index == iters_per_epoch)) {
        Progress p{true, epoch, o.epochs(), batch_index, iters_per_epoch, record.images, loss_sum / record.images,
                   view.segmentation ? -1.0 : static_cast<double>(correct) / record.images};
        if (!progress(p)) stop = true;
      }
      stop = distributed.any(stop);
    };

    if (from_cache) {
      record.used_feature_cache = true;
      for (const auto& indices : train.batch_indices(static_cast<uint64_t>(epoch))) {
        std::vector<torch::Tensor> fs, ls;
        for (auto i : indices) {
          const auto& entry = cache.at(i);
          fs.push_back(entry.first);
          ls.push_back(entry.second);
        }
        train_step(torch::stack(fs), torch::stack(ls), true);
        report();
        if (stop) break;
      }
    } else {
      auto stream = train.epoch(static_cast<uint64_t>(epoch));
      while (auto batch = stream->next()) {
        auto x = batch->fields.at(0).to(device, true);
        auto y = batch->fields.at(1).to(device, true);
        if (o.channels_last() && device.is_cuda()) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
        if (use_cache) {
          torch::Tensor features;
          {
            torch::NoGradGuard no_grad;
            features = view.resnet->forward_features(x);
          }
          for (size_t k = 0; k < batch->indices.size(); ++k) cache[batch->indices[k]] = {features[k], y[k]};
          train_step(features, y, true);
        } else {
          train_step(x, y, false);
        }
        report();
        if (stop) break;
      }
    }
    // The history is the whole run's: every rank's batches, and rank 0's batch-norm statistics
    // (DistributedDataParallel's broadcast_buffers, which leaves every rank with rank 0's).
    const auto totals =
        distributed.all_reduce_sum({loss_sum, static_cast<double>(record.images), static_cast<double>(correct)});
    loss_sum = totals[0];
    record.images = static_cast<int64_t>(totals[1]);
    correct = static_cast<int64_t>(totals[2]);
    record.step_losses = distributed.all_reduce_mean(record.step_losses);
    if (!extract) distributed.broadcast(model->buffers());
    record.seconds = seconds_since(start);
    record.train_loss = record.images ? loss_sum / record.images : 0.0;
    record.train_acc = view.segmentation ? -1.0 : (record.images ? static_cast<double>(correct) / record.images : 0.0);
    record.images_per_second = record.seconds > 0 ? record.images / record.seconds : 0.0;
    if (stop) {
      // An interrupted epoch is not checkpointed: last.pt stays at the last complete one.
      result.interrupted = true;
      result.epochs.push_back(std::move(record));
      break;
    }
    if (val) {
      bool stopped = false;
      record.val = run_evaluation(view, *val, o, device, distributed, epoch, progress, stopped,
                                  use_cache ? &val_cache : nullptr);
      record.has_val = true;
      if (stopped) {
        result.interrupted = true;
        result.epochs.push_back(std::move(record));
        break;
      }
      const double metric = view.segmentation ? record.val.mean_iou : record.val.acc1;
      if (state.best_epoch < 0 || metric > state.best_metric) {
        state.best_metric = metric;
        state.best_epoch = epoch;
        if (!o.checkpoint_dir().empty() && distributed.is_main_process()) {
          io::save_weights(*model, o.checkpoint_dir() + "/best.pt");
        }
      }
    }
    state.epochs_done = epoch + 1;
    if (!o.checkpoint_dir().empty() && distributed.is_main_process()) {
      write_checkpoint(o.checkpoint_dir() + "/last.pt", *model, *optimizer, o, state, names, params);
    }
    result.epochs.push_back(std::move(record));
  }
  result.best_metric = state.best_metric;
  result.best_epoch = state.best_epoch;
  return result;
}

EvalResult evaluate(const std::shared_ptr<nn::Module>& model, const data::ThreadedLoader& loader, const FitOptions& options,
                    const ProgressFn& progress) {
  ModelView view(model, options.task());
  const auto device = resolve_device(options.device());
  model->to(device);
  const Distributed distributed(options.process_group(), device);
  const auto shard = distributed.shard(loader, /*pad=*/false);
  bool stopped = false;
  return run_evaluation(view, shard, options, device, distributed, 0, progress, stopped);
}

}  // namespace torchtl::engine
