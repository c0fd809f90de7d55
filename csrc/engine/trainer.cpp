#include "engine/trainer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>
#include <optional>
#include <tuple>
#include <filesystem>
#include <set>
#include <unordered_map>

#include "engine/amp.h"
#include "engine/metrics.h"
#include "engine/schedule.h"
#include "io/weights.h"
#include "models/fast_path.h"
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

// The string form of the options as parameter groups: the body at lr, the heads at head_lr.
std::vector<ParamGroup> named_optimizer_groups(const FitOptions& o, std::vector<torch::Tensor> body,
                                               std::vector<torch::Tensor> head) {
  TORCH_CHECK_VALUE(o.optimizer() == "sgd" || o.optimizer() == "adam" || o.optimizer() == "adamw",
                    "unknown optimizer '", o.optimizer(), "'; choose sgd, adam or adamw (or pass a torch.optim ",
                    "SGD, Adam, AdamW or RMSprop instance)");
  ParamGroup g;
  g.lr = o.lr();
  g.momentum = o.momentum();
  g.nesterov = o.nesterov();
  g.weight_decay = o.weight_decay();
  std::vector<ParamGroup> groups;
  g.params = std::move(body);
  groups.push_back(g);
  g.params = std::move(head);
  g.lr = o.head_lr() >= 0 ? o.head_lr() : o.lr();
  groups.push_back(g);
  return groups;
}

// Groups handed over from a torch.optim optimizer hold the model's own tensors: each is found
// among the trainable parameters by identity. Frozen ones (feature_extractor) are left out.
std::vector<ParamGroup> given_optimizer_groups(const FitOptions& o, nn::Module& model,
                                               const std::vector<torch::Tensor>& trainable) {
  std::set<const c10::TensorImpl*> all, train;
  for (const auto& p : model.parameters()) all.insert(p.unsafeGetTensorImpl());
  for (const auto& p : trainable) train.insert(p.unsafeGetTensorImpl());
  std::vector<ParamGroup> groups;
  for (size_t g = 0; g < o.param_groups().size(); ++g) {
    ParamGroup group = o.param_groups()[g];
    group.params.clear();
    for (const auto& p : o.param_groups()[g].params) {
      TORCH_CHECK_VALUE(all.count(p.unsafeGetTensorImpl()), "the optimizer's param group ", g, " holds a tensor of shape ",
                        p.sizes(), " that is not a parameter of the model being trained");
      if (train.count(p.unsafeGetTensorImpl())) group.params.push_back(p);
    }
    groups.push_back(std::move(group));
  }
  return groups;
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
      if (adam->max_exp_avg_sq().defined()) entry.insert("max_exp_avg_sq", adam->max_exp_avg_sq().cpu());
    } else if (auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(it->second.get())) {
      entry.insert("step", adamw->step());
      entry.insert("exp_avg", adamw->exp_avg().cpu());
      entry.insert("exp_avg_sq", adamw->exp_avg_sq().cpu());
      if (adamw->max_exp_avg_sq().defined()) entry.insert("max_exp_avg_sq", adamw->max_exp_avg_sq().cpu());
    } else if (auto* rms = dynamic_cast<torch::optim::RMSpropParamState*>(it->second.get())) {
      entry.insert("step", rms->step());
      entry.insert("square_avg", rms->square_avg().cpu());
      if (rms->momentum_buffer().defined()) entry.insert("momentum_buffer", rms->momentum_buffer().cpu());
      if (rms->grad_avg().defined()) entry.insert("grad_avg", rms->grad_avg().cpu());
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
    auto optional = [&](const char* key) { return entry.contains(key) ? tensor(key) : torch::Tensor(); };
    void* key = params[i].unsafeGetTensorImpl();
    if (kind == "sgd") {
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(tensor("momentum_buffer"));
      state[key] = std::move(s);
    } else if (kind == "adam") {
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->step(entry.at("step").toInt()).exp_avg(tensor("exp_avg")).exp_avg_sq(tensor("exp_avg_sq"));
      s->max_exp_avg_sq(optional("max_exp_avg_sq"));
      state[key] = std::move(s);
    } else if (kind == "adamw") {
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(entry.at("step").toInt()).exp_avg(tensor("exp_avg")).exp_avg_sq(tensor("exp_avg_sq"));
      s->max_exp_avg_sq(optional("max_exp_avg_sq"));
      state[key] = std::move(s);
    } else {
      auto s = std::make_unique<torch::optim::RMSpropParamState>();
      s->step(entry.at("step").toInt()).square_avg(tensor("square_avg"));
      s->momentum_buffer(optional("momentum_buffer")).grad_avg(optional("grad_avg"));
      state[key] = std::move(s);
    }
  }
}

// Names row `row` of a batch in an error: the dataset's own description of the sample (its map
// file line and files) when the batch came from torchtl's loader, else its place in the batch.
using RowNamer = std::function<std::string(int64_t row)>;

RowNamer row_namer(const data::ThreadedLoader* loader, const std::vector<int64_t>* indices) {
  return [loader, indices](int64_t row) {
    if (loader && indices && row < static_cast<int64_t>(indices->size())) {
      return loader->sample_name(static_cast<size_t>((*indices)[row]));
    }
    return c10::str("sample ", row, " of the batch");
  };
}

// Targets the model has no class for, named by sample: cross_entropy would only say "Target 7 is
// out of bounds" (or, on CUDA, fail a device-side assert). `ignore_index` values are allowed.
void check_targets(const torch::Tensor& target, int64_t num_classes, int64_t ignore_index, const RowNamer& name_row) {
  auto bad = target.ge(num_classes).logical_or_(target.lt(0)).logical_and_(target.ne(ignore_index));
  if (!bad.any().item<bool>()) return;
  const auto rows = target.dim() > 1 ? bad.flatten(1).any(1) : bad;
  const auto row = rows.nonzero().select(1, 0)[0].item<int64_t>();
  const auto value = target[row].masked_select(bad[row]).max().item<int64_t>();
  TORCH_CHECK_VALUE(false, name_row(row), ": the target holds class ", value, " but the model has ", num_classes,
                    " classes (num_classes mismatch between model and data; values must be in [0, ", num_classes,
                    ")", target.dim() > 1 ? c10::str(" or ignore_index ", ignore_index) : "", ")");
}

torch::Tensor classification_loss(const torch::Tensor& logits, const torch::Tensor& target, const FitOptions& o,
                                  const RowNamer& name_row) {
  TORCH_CHECK_VALUE(target.dim() == 1, "classification targets must be N class indices, got shape ", target.sizes());
  auto options = F::CrossEntropyFuncOptions().label_smoothing(o.label_smoothing());
  check_targets(target, logits.size(1), options.ignore_index(), name_row);
  if (o.class_weights().defined()) options.weight(o.class_weights().to(logits.device()));
  return F::cross_entropy(logits, target, options);
}

// The references' criterion: cross entropy on "out" (+ aux_weight x on "aux"), ignoring 255.
torch::Tensor segmentation_loss(const torch::OrderedDict<std::string, torch::Tensor>& out, const torch::Tensor& target,
                                const FitOptions& o, const RowNamer& name_row) {
  check_targets(target, out["out"].size(1), o.ignore_index(), name_row);
  auto ce = [&](const torch::Tensor& x) {
    auto options = F::CrossEntropyFuncOptions().ignore_index(o.ignore_index());
    if (o.class_weights().defined()) options.weight(o.class_weights().to(x.device()));
    return F::cross_entropy(x, target, options);
  };
  auto loss = ce(out["out"]);
  if (const auto* aux = out.find("aux")) loss = loss + o.aux_weight() * ce(*aux);
  return loss;
}

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

struct Throttle {
  Clock::time_point last = Clock::now() - std::chrono::seconds(1);
  bool due(bool last_batch) {
    auto now = Clock::now();
    if (!last_batch && now - last < std::chrono::milliseconds(200)) return false;
    last = now;
    return true;
  }
};

void warn(const WarningFn& warning, Warning kind, const std::string& message) {
  if (warning) {
    warning(kind, message);
  } else {
    TORCH_WARN(message);
  }
}

void warn_skipped(const WarningFn& warning, const std::vector<std::string>& skipped, const std::string& where) {
  if (skipped.empty()) return;
  warn(warning, Warning::SkippedSamples,
       c10::str("skipped ", skipped.size(), " bad sample", skipped.size() == 1 ? "" : "s", " in ", where, "; first: ",
                skipped.front()));
}

bool all_finite(const nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (const auto& p : model.parameters()) {
    if (!torch::isfinite(p).all().item<bool>()) return false;
  }
  for (const auto& b : model.buffers()) {
    if (b.is_floating_point() && !torch::isfinite(b).all().item<bool>()) return false;
  }
  return true;
}

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

// This rank's part of `source`: torchtl's loader is sharded here (`pad`: equal shards, so ranks take
// as many training steps; otherwise the disjoint shards an exact evaluation needs). Any other
// source is the caller's to shard (a DistributedSampler), and is used as it is.
class ShardedSource : public BatchSource {
 public:
  ShardedSource(const BatchSource& source, const Distributed& distributed, bool pad) : source_(source) {
    if (source.loader()) shard_.emplace(distributed.shard(*source.loader(), pad));
  }
  int64_t num_batches() const override {
    return shard_ ? static_cast<int64_t>(shard_->num_batches()) : source_.num_batches();
  }
  std::function<std::optional<data::Batch>()> epoch(uint64_t epoch) const override {
    return shard_ ? LoaderSource(*shard_).epoch(epoch) : source_.epoch(epoch);
  }
  const data::ThreadedLoader* loader() const override { return shard_ ? &*shard_ : nullptr; }

 private:
  const BatchSource& source_;
  std::optional<data::ThreadedLoader> shard_;
};

// One pass over `loader`. With `cache` (a ResNet in feature_extractor mode, deterministic data),
// the frozen features are taken from it when it covers the data set, and stored into it otherwise.
EvalResult run_evaluation(ModelView& view, const BatchSource& source, const FitOptions& o, torch::Device device,
                          const Distributed& distributed, int64_t epoch, const ProgressFn& progress,
                          const WarningFn& warning, bool& stopped,
                          FeatureCache* cache = nullptr) {
  torch::NoGradGuard no_grad;
  view.root->eval();
  EvalResult r;
  const auto start = Clock::now();
  std::unique_ptr<ConfusionMatrix> confusion;
  double loss_sum = 0.0;
  int64_t correct1 = 0, correct5 = 0, batch_index = 0;
  Throttle throttle;
  const auto dtype = amp_dtype(o.amp(), device);
  const auto num_batches = source.num_batches();
  const auto* loader = source.loader();
  if (!loader) cache = nullptr;
  const bool from_cache = cache && view.resnet && covers(*cache, *loader, 0);
  // Yields the next (input, target, input_is_features) or nothing at the end.
  std::function<std::optional<data::Batch>()> stream;
  std::vector<std::vector<int64_t>> cached_batches;
  size_t next_cached = 0;
  if (from_cache) {
    cached_batches = loader->batch_indices(0);
  } else {
    stream = source.epoch(0);
  }
  auto next = [&]() -> std::optional<std::tuple<torch::Tensor, torch::Tensor, bool, std::vector<int64_t>>> {
    if (from_cache) {
      if (next_cached == cached_batches.size()) return std::nullopt;
      std::vector<torch::Tensor> fs, ls;
      const auto& indices = cached_batches[next_cached++];
      for (auto i : indices) {
        const auto& entry = cache->at(i);
        fs.push_back(entry.first);
        ls.push_back(entry.second);
      }
      return std::make_tuple(torch::stack(fs), torch::stack(ls), true, indices);
    }
    auto batch = stream();
    while (batch && batch->fields.empty()) {  // only samples skipped by on_error="skip"
      r.skipped.insert(r.skipped.end(), batch->skipped.begin(), batch->skipped.end());
      batch = stream();
    }
    if (!batch) return std::nullopt;
    r.skipped.insert(r.skipped.end(), batch->skipped.begin(), batch->skipped.end());
    auto x = batch->fields.at(0).to(device, /*non_blocking=*/true);
    auto y = batch->fields.at(1).to(device, /*non_blocking=*/true);
    x = models::to_fast_layout(x);
    if (cache && view.resnet) {
      auto features = view.resnet->forward_features(x);
      for (size_t k = 0; k < batch->indices.size(); ++k) (*cache)[batch->indices[k]] = {features[k], y[k]};
      return std::make_tuple(features, y, true, std::move(batch->indices));
    }
    return std::make_tuple(x, y, false, std::move(batch->indices));
  };
  while (auto item = next()) {
    auto& [x, y, is_features, indices] = *item;
    const auto name_row = row_namer(loader, &indices);
    const int64_t n = x.size(0);
    torch::Tensor prediction, loss;
    {
      AutocastScope autocast(dtype, device);
      if (view.segmentation) {
        auto out = view.segmentation->forward(x);
        loss = segmentation_loss(out, y, o, name_row);
        prediction = out["out"].argmax(1);
        if (!confusion) confusion = std::make_unique<ConfusionMatrix>(out["out"].size(1));
      } else {
        auto logits = is_features ? view.resnet->forward_head(x) : view.forward_any(x);
        loss = classification_loss(logits, y, o, name_row);
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
  warn_skipped(warning, r.skipped, c10::str("evaluation", o.epochs() > 1 || epoch > 0 ? c10::str(" after epoch ", epoch + 1) : ""));
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
  TORCH_CHECK_VALUE(r.images > 0, "the evaluation loader yielded no batch (empty map file, drop_last with fewer ",
                    "samples than batch_size, or every sample skipped)");
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

// A last.pt written by fit(), with the file named in every way reading it can fail.
c10::impl::GenericDict read_resume_checkpoint(const std::string& path) {
  c10::IValue value;
  try {
    value = io::load_pickle(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, "resume: cannot read '", path, "' (a truncated or corrupt file, or not one torch.save ",
                      "wrote): ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    TORCH_CHECK_VALUE(false, "resume: cannot read '", path, "' (a truncated or corrupt file, or not one torch.save ",
                      "wrote): ", e.what());
  }
  const char* needed[] = {"model", "optimizer", "epoch", "iteration", "best_metric", "best_epoch", "rng_state"};
  const bool is_dict = value.isGenericDict();
  for (const char* key : needed) {
    TORCH_CHECK_VALUE(is_dict && value.toGenericDict().contains(key), "resume: '", path,
                      "' is not a checkpoint written by fit (it has no '", key, "' entry): resume needs the last.pt ",
                      "of a checkpoint_dir; best.pt and other state dicts hold weights only (load those into the ",
                      "model instead)");
  }
  return value.toGenericDict();
}

}  // namespace

FitResult fit(const std::shared_ptr<nn::Module>& model, const data::ThreadedLoader& train, const data::ThreadedLoader* val,
              const FitOptions& o, const ProgressFn& progress, const EpochEndFn& epoch_end, const WarningFn& warning) {
  LoaderSource train_source(train);
  std::optional<LoaderSource> val_source;
  if (val) val_source.emplace(*val);
  return fit(model, train_source, val_source ? &*val_source : nullptr, o, progress, epoch_end, warning);
}

FitResult fit(const std::shared_ptr<nn::Module>& model, const BatchSource& unsharded_train,
              const BatchSource* unsharded_val, const FitOptions& o, const ProgressFn& progress, const EpochEndFn& epoch_end, const WarningFn& warning) {
  models::ExactModeGuard exact(models::exact_mode() || !o.channels_last());
  ModelView view(model, o.task());
  // Each rank trains on an equal share and validates on a disjoint one (exact summed metrics).
  const Distributed distributed(o.process_group(), resolve_device(o.device()));
  const ShardedSource train(unsharded_train, distributed, /*pad=*/true);
  std::optional<ShardedSource> val_shard;
  if (unsharded_val) val_shard.emplace(*unsharded_val, distributed, /*pad=*/false);
  const BatchSource* val = val_shard ? &*val_shard : nullptr;
  TORCH_CHECK_VALUE(o.mode() == "scratch" || o.mode() == "finetune" || o.mode() == "feature_extractor", "unknown mode '",
                    o.mode(), "'; choose scratch, finetune or feature_extractor");
  TORCH_CHECK_VALUE(o.epochs() > 0, "epochs must be positive, got ", o.epochs());
  TORCH_CHECK_VALUE(o.max_nonfinite_losses() > 0, "max_nonfinite_losses must be positive, got ", o.max_nonfinite_losses());
  const auto iters_per_epoch = static_cast<int64_t>(train.num_batches());
  // Every step all-reduces, so ranks must take as many; a caller-sharded iterable may not.
  const auto most_iters = distributed.all_reduce_max(iters_per_epoch);
  const auto fewest_iters = -distributed.all_reduce_max(-iters_per_epoch);
  TORCH_CHECK_VALUE(most_iters == fewest_iters, "data-parallel training needs as many batches per epoch on every rank, ",
                    "but the ranks' training data yield between ", fewest_iters, " and ", most_iters,
                    " (shard it with a DistributedSampler, whose drop_last=False pads the shards equal)");
  TORCH_CHECK_VALUE(iters_per_epoch > 0, "the training loader yields no batch (empty map file, or drop_last with fewer ",
                    "samples than batch_size)");
  const auto device = resolve_device(o.device());
  const auto dtype = amp_dtype(o.amp(), device);
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
  models::ChannelsLastParameters channels_last(*model);

  std::vector<std::string> names;
  std::vector<torch::Tensor> params, body, head;
  for (const auto& item : model->named_parameters()) {
    if (!item.value().requires_grad()) continue;
    names.push_back(item.key());
    params.push_back(item.value());
    (head_params.count(item.value().unsafeGetTensorImpl()) ? head : body).push_back(item.value());
  }
  auto optimizer = make_optimizer(o.optimizer(), o.param_groups().empty() ? named_optimizer_groups(o, body, head)
                                                                         : given_optimizer_groups(o, *model, params));
  std::vector<double> base_lrs;
  for (const auto& group : optimizer->param_groups()) base_lrs.push_back(group.options().get_lr());
  GradScaler scaler;
  scaler.init(dtype == at::kHalf, device);

  RunState state;
  if (!o.resume().empty()) {
    auto ckpt = read_resume_checkpoint(o.resume());
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
  const bool use_cache = extract && o.cache_features() && view.resnet != nullptr && train.loader() != nullptr;
  FeatureCache cache, val_cache;

  FitResult result;
  result.best_metric = state.best_metric;
  result.best_epoch = state.best_epoch;
  int64_t nonfinite_total = 0;
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
    const bool from_cache = use_cache && covers(cache, *train.loader(), static_cast<uint64_t>(epoch));

    auto train_step = [&](const torch::Tensor& input, const torch::Tensor& target, bool input_is_features,
                          const std::vector<int64_t>& indices) {
      const auto name_row = row_namer(train.loader(), &indices);
      const double factor = schedule.factor(state.iteration);
      for (size_t g = 0; g < optimizer->param_groups().size(); ++g) {
        optimizer->param_groups()[g].options().set_lr(base_lrs[g] * factor);
      }
      record.lr = base_lrs.front() * factor;
      optimizer->zero_grad();
      torch::Tensor loss, logits;
      {
        AutocastScope autocast(dtype, device);
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
          loss = segmentation_loss(out, target, o, name_row);
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
          loss = classification_loss(logits, target, o, name_row);
        }
      }
      const double value = loss.item<double>();
      // Ranks skip a step together: one that skipped its all-reduce would leave the others waiting.
      if (distributed.any(!std::isfinite(value))) {
        // Its gradients would make every weight NaN: the step is skipped, as GradScaler skips one.
        ++record.nonfinite_losses;
        ++nonfinite_total;
        ++state.iteration;
        record.step_losses.push_back(value);
        if (nonfinite_total == 1) {
          warn(warning, Warning::NonFiniteLoss,
               c10::str("the loss is ", std::isfinite(value) ? c10::str("non-finite on another rank") : c10::str(value), " at epoch ", epoch + 1, ", step ", record.step_losses.size(),
                        ": its optimizer step is skipped; the run stops at max_nonfinite_losses=",
                        o.max_nonfinite_losses(), " such losses (a smaller lr or clip_grad_norm may help)"));
        }
        TORCH_CHECK(nonfinite_total < o.max_nonfinite_losses(), "training stopped: ", nonfinite_total,
                    " non-finite losses (max_nonfinite_losses=", o.max_nonfinite_losses(), "), the last at epoch ",
                    epoch + 1, ", step ", record.step_losses.size(),
                    "; last.pt holds the last complete epoch, best.pt the best finite model");
        return;
      }
      scaler.scaled(loss).backward();
      distributed.all_reduce_gradients(params);
      if (scaler.unscale(params)) {
        if (o.clip_grad_norm() > 0) torch::nn::utils::clip_grad_norm_(params, o.clip_grad_norm());
        optimizer->step();
      }
      scaler.update();
      ++state.iteration;
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
      for (const auto& indices : train.loader()->batch_indices(static_cast<uint64_t>(epoch))) {
        std::vector<torch::Tensor> fs, ls;
        for (auto i : indices) {
          const auto& entry = cache.at(i);
          fs.push_back(entry.first);
          ls.push_back(entry.second);
        }
        train_step(torch::stack(fs), torch::stack(ls), true, indices);
        report();
        if (stop) break;
      }
    } else {
      auto stream = train.epoch(static_cast<uint64_t>(epoch));
      while (auto batch = stream()) {
        record.skipped.insert(record.skipped.end(), batch->skipped.begin(), batch->skipped.end());
        if (batch->fields.empty()) continue;  // only samples skipped by on_error="skip"
        auto x = batch->fields.at(0).to(device, true);
        auto y = batch->fields.at(1).to(device, true);
        x = models::to_fast_layout(x);
        if (use_cache) {
          torch::Tensor features;
          {
            torch::NoGradGuard no_grad;
            features = view.resnet->forward_features(x);
          }
          for (size_t k = 0; k < batch->indices.size(); ++k) cache[batch->indices[k]] = {features[k], y[k]};
          train_step(features, y, true, batch->indices);
        } else {
          train_step(x, y, false, batch->indices);
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
    warn_skipped(warning, record.skipped, c10::str("epoch ", epoch + 1, " (training)"));
    if (stop) {
      // An interrupted epoch is not checkpointed: last.pt stays at the last complete one.
      result.interrupted = true;
      result.epochs.push_back(std::move(record));
      break;
    }
    if (val) {
      bool stopped = false;
      record.val = run_evaluation(view, *val, o, device, distributed, epoch, progress, warning, stopped,
                                  use_cache ? &val_cache : nullptr);
      record.has_val = true;
      if (stopped) {
        result.interrupted = true;
        result.epochs.push_back(std::move(record));
        break;
      }
      const double metric = view.segmentation ? record.val.mean_iou : record.val.acc1;
      // Only a finite metric of a finite model can be the best: a NaN neither wins nor blocks later epochs.
      const bool no_best = state.best_epoch < 0 || !std::isfinite(state.best_metric);
      if (std::isfinite(metric) && (no_best || metric > state.best_metric) && all_finite(*model)) {
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
    record.best_metric = state.best_metric;
    record.best_epoch = state.best_epoch;
    const bool keep_going = !distributed.any(epoch_end && !epoch_end(record));
    result.epochs.push_back(std::move(record));
    if (!keep_going) {
      result.interrupted = epoch + 1 < o.epochs();
      break;
    }
  }
  result.best_metric = state.best_metric;
  result.best_epoch = state.best_epoch;
  return result;
}

EvalResult evaluate(const std::shared_ptr<nn::Module>& model, const BatchSource& loader, const FitOptions& options,
                    const ProgressFn& progress, const WarningFn& warning) {
  models::ExactModeGuard exact(models::exact_mode() || !options.channels_last());
  ModelView view(model, options.task());
  const auto device = resolve_device(options.device());
  model->to(device);
  const Distributed distributed(options.process_group(), device);
  const ShardedSource shard(loader, distributed, /*pad=*/false);
  bool stopped = false;
  return run_evaluation(view, shard, options, device, distributed, 0, progress, warning, stopped);
}

EvalResult evaluate(const std::shared_ptr<nn::Module>& model, const data::ThreadedLoader& loader, const FitOptions& options,
                    const ProgressFn& progress, const WarningFn& warning) {
  return evaluate(model, LoaderSource(loader), options, progress, warning);
}

}  // namespace torchtl::engine
