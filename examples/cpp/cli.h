#pragma once
// What the example programs share: option parsing with usage errors (exit status 2) apart from
// run-time errors (exit status 1), the training programs' common options and the end of their
// runs, and the threaded loader over a map-file dataset.
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/datasets.h"
#include "data/loader.h"
#include "engine/distributed.h"
#include "engine/trainer.h"
#include "io/weights.h"

namespace torchtl::examples {

// `text` as an integer when all of it is one (and it fits int64_t).
inline std::optional<int64_t> whole_integer(const std::string& text) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != text.size()) return std::nullopt;
  return value;
}

// A problem with the command line: reported with the usage text and exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Options as the `torchtl` command spells them (torchvision references' names, older names as
// aliases), each bound to a variable that holds its default; --help lists them with their defaults.
class Options {
 public:
  // `synopsis` follows "usage: ", `description` the usage line.
  Options(std::string synopsis, std::string description)
      : synopsis_(std::move(synopsis)), description_(std::move(description)) {}

  // `names`: comma-separated, the references' name first ("-b,--batch-size"); `show_default`:
  // false where the default is not a value (required options, defaults derived from others).
  void text(const std::string& names, std::string* target, const std::string& help,
            std::vector<std::string> choices = {}, bool show_default = true) {
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "{" : ",") + c;
    add(names, choices.empty() ? "TEXT" : list + "}", help, show_default && !target->empty() ? *target : "",
        [target, choices](const std::string& option, const std::string& value) {
          if (!choices.empty() && std::find(choices.begin(), choices.end(), value) == choices.end()) {
            std::string one_of;
            for (const auto& c : choices) one_of += (one_of.empty() ? "" : ", ") + c;
            throw UsageError(option + " expects one of " + one_of + ", got '" + value + "'");
          }
          *target = value;
        });
  }
  void integer(const std::string& names, int64_t* target, int64_t minimum, const std::string& help,
               bool show_default = true) {
    add(names, "N", help, show_default ? std::to_string(*target) : "",
        [target, minimum](const std::string& option, const std::string& value) {
          *target = parse_integer(option, value, minimum);
        });
  }
  // A real number > minimum, or >= minimum when `inclusive`.
  void real(const std::string& names, double* target, double minimum, bool inclusive, const std::string& help) {
    std::ostringstream shown;
    shown << *target;
    add(names, "X", help, shown.str(), [target, minimum, inclusive](const std::string& option, const std::string& value) {
      *target = parse_real(option, value, minimum, inclusive);
    });
  }
  // An option without a value: present means true.
  void flag(const std::string& names, bool* target, const std::string& help) {
    add(names, "", help, "", [target](const std::string&, const std::string&) { *target = true; });
    options_.back().takes_value = false;
  }

  // The arguments that are not options, in order (a program taking files, as `torchtl predict`).
  void positionals(std::vector<std::string>* target) { positionals_ = target; }

  void parse(int argc, char** argv) const {
    std::set<size_t> seen;
    for (int i = 1; i < argc; ++i) {
      const std::string option = argv[i];
      if (option == "-h" || option == "--help") {
        std::cout << usage();
        std::exit(0);
      }
      if (positionals_ && (option.empty() || option[0] != '-')) {
        positionals_->push_back(option);
        continue;
      }
      const auto found = index_.find(option);
      if (found == index_.end()) throw UsageError("unknown option '" + option + "'");
      const auto& spec = options_[found->second];
      if (!seen.insert(found->second).second) throw UsageError(spec.names + " given twice");
      if (!spec.takes_value) {
        spec.set(option, "");
        continue;
      }
      if (i + 1 >= argc) throw UsageError(option + " needs a value");
      spec.set(option, argv[++i]);
    }
  }

  std::string usage() const {
    std::ostringstream out;
    out << "usage: " << synopsis_ << "\n" << description_ << "\n\noptions:\n  -h, --help\n";
    for (const auto& o : options_) {
      std::string names;
      for (size_t start = 0; start <= o.names.size();) {
        const auto comma = std::min(o.names.find(',', start), o.names.size());
        names += (names.empty() ? "" : ", ") + o.names.substr(start, comma - start);
        start = comma + 1;
      }
      if (o.takes_value) names += " " + o.metavar;
      out << "  " << names << "\n        " << o.help;
      if (!o.shown_default.empty()) out << " (default: " << o.shown_default << ")";
      out << "\n";
    }
    return out.str();
  }

 private:
  struct Spec {
    std::string names, metavar, help, shown_default;
    std::function<void(const std::string&, const std::string&)> set;
    bool takes_value = true;
  };

  void add(const std::string& names, std::string metavar, const std::string& help, std::string shown_default,
           std::function<void(const std::string&, const std::string&)> set) {
    for (size_t start = 0; start <= names.size();) {
      const auto comma = std::min(names.find(',', start), names.size());
      index_[names.substr(start, comma - start)] = options_.size();
      start = comma + 1;
    }
    options_.push_back({names, std::move(metavar), help, std::move(shown_default), std::move(set)});
  }

  static int64_t parse_integer(const std::string& option, const std::string& text, int64_t minimum) {
    const auto value = whole_integer(text);
    if (!value || *value < minimum) {
      throw UsageError(option + " expects an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
    }
    return *value;
  }

  static double parse_real(const std::string& option, const std::string& text, double minimum, bool inclusive) {
    size_t used = 0;
    double value = 0;
    try {
      value = std::stod(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size() || !(inclusive ? value >= minimum : value > minimum)) {
      std::ostringstream bound;
      bound << (inclusive ? ">= " : "> ") << minimum;
      throw UsageError(option + " expects a number " + bound.str() + ", got '" + text + "'");
    }
    return value;
  }

  std::string synopsis_, description_;
  std::vector<std::string>* positionals_ = nullptr;
  std::vector<Spec> options_;
  std::map<std::string, size_t> index_;
};

// The options both training programs take, as `torchtl train` names them; each program sets its
// own defaults before declaring them.
struct TrainArgs {
  std::string train, val, weights, model, mode, device, out, opt = "sgd", lr_scheduler, resume, amp = "off";
  int64_t num_classes = 0, epochs = 10, batch_size = 8, workers = 2, seed = 0, lr_warmup_epochs = 0, lr_step_size = 7;
  double lr = 0.01, momentum = 0.9, weight_decay = 1e-4, lr_gamma = 0.1;
};

// The data and the class count; the help texts say what a line of the program's map files holds.
inline void add_data_options(Options& options, TrainArgs& args, const std::string& train_help,
                             const std::string& num_classes_help) {
  options.text("--train", &args.train, train_help);
  options.text("--val", &args.val, "validation map file, evaluated after every epoch");
  options.integer("--num-classes,--classes", &args.num_classes, 1, num_classes_help, /*show_default=*/false);
}

// The optimizer and its learning-rate schedule.
inline void add_optimizer_options(Options& options, TrainArgs& args) {
  auto optimizers = engine::fit_option_choices().at("optimizer");
  optimizers.push_back("sgd_nesterov");  // the torchvision references' name for SGD with Nesterov momentum
  options.text("--opt,--optimizer", &args.opt, "optimizer", optimizers);
  options.real("--lr", &args.lr, 0, false, "learning rate");
  options.real("--momentum", &args.momentum, 0, true, "SGD momentum");
  options.real("--wd,--weight-decay", &args.weight_decay, 0, true, "weight decay");
  options.text("--lr-scheduler,--lr-schedule", &args.lr_scheduler, "learning-rate schedule",
               engine::fit_option_choices().at("lr_schedule"));
  options.integer("--lr-warmup-epochs", &args.lr_warmup_epochs, 0, "epochs of linear warm-up");
  options.integer("--lr-step-size", &args.lr_step_size, 1, "--lr-scheduler step: epochs per decay");
  options.real("--lr-gamma", &args.lr_gamma, 0, false, "--lr-scheduler step: decay factor");
}

// How long and where the run goes: epochs, loader threads, device, precision, resuming.
inline void add_run_options(Options& options, TrainArgs& args) {
  options.integer("--epochs", &args.epochs, 1, "epochs to train");
  options.integer("-j,--workers", &args.workers, 0, "loader threads");
  options.text("--device", &args.device, "cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)");
  options.text("--amp", &args.amp,
               "mixed precision: bf16 (CUDA, or a CPU with AVX-512 BF16 or AMX) or fp16 (CUDA)",
               engine::fit_option_choices().at("amp"));
  options.text("--resume", &args.resume, "last.pt of a run to continue (its folder is the default --output-dir)");
}

// fit()'s options from the shared ones; the program adds those of its task.
inline engine::FitOptions fit_options(const TrainArgs& args, const std::string& task, const torch::Device& device) {
  return engine::FitOptions()
      .task(task)
      .mode(args.mode)
      .optimizer(args.opt == "sgd_nesterov" ? "sgd" : args.opt)
      .nesterov(args.opt == "sgd_nesterov")
      .lr(args.lr)
      .momentum(args.momentum)
      .weight_decay(args.weight_decay)
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
}

// The end of a run: names the best epoch by `metric` and the files saved, then evaluates best.pt
// again on the validation data. In a data-parallel run rank 0 alone wrote best.pt: it reads it and
// hands the weights to the other ranks, which need no access to its run folder.
inline engine::EvalResult evaluate_best(const std::shared_ptr<torch::nn::Module>& model, const data::ThreadedLoader& val,
                                        const engine::FitOptions& options, const engine::FitResult& result,
                                        const std::string& metric) {
  const auto best = options.checkpoint_dir() + "/best.pt";
  std::cout << "best validation " << metric << " " << result.best_metric << " after epoch " << result.best_epoch + 1
            << "; saved " << best << " and " << options.checkpoint_dir() << "/last.pt\n";
  const engine::Distributed distributed(options.process_group(), engine::resolve_device(options.device()));
  std::exception_ptr failed;
  if (distributed.is_main_process()) {
    try {
      io::load_weights(*model, best);
    } catch (...) {
      failed = std::current_exception();
    }
  }
  // Every rank learns of rank 0's failure, rather than waiting for its weights forever.
  if (distributed.any(failed != nullptr)) {
    if (failed) std::rethrow_exception(failed);
    throw std::runtime_error("rank 0 could not read " + best);
  }
  auto state = model->parameters();
  for (const auto& b : model->buffers()) state.push_back(b);
  distributed.broadcast(state);
  return engine::evaluate(model, val, options);
}

// `torchtl train`'s default run folder: the resumed run's, else runs/<task>_<model>.
inline std::string default_output_dir(const std::string& task, const std::string& model, const std::string& resume) {
  if (!resume.empty()) {
    const auto parent = std::filesystem::path(resume).parent_path().string();
    return parent.empty() ? "." : parent;
  }
  return "runs/" + task + "_" + model;
}

// A run folder that already holds an earlier run is continued with --resume, never overwritten;
// without its last.pt (removed, or a run killed in its first writes) there is nothing to resume.
inline void check_output_dir(const std::string& out, const std::string& resume) {
  if (!resume.empty()) return;
  const auto exists = [&](const char* file) { return std::ifstream(out + "/" + file).good(); };
  if (exists("last.pt")) {
    throw UsageError(out + " already holds a run (last.pt); choose another --output-dir, or continue it with --resume " +
                     out + "/last.pt");
  }
  if (exists("best.pt")) {
    throw UsageError(out + " holds files of an earlier run (best.pt) but no last.pt, so that run cannot be resumed; "
                     "to start a new one, move best.pt out of it or choose another --output-dir");
  }
}

// The checks both training programs make once the options are parsed: the data given, --mode's
// default (finetune with --weights, else scratch) and the run folder. `num_classes_hint` follows
// the message of a missing --num-classes.
inline void check_train_args(TrainArgs& args, const std::string& task, const std::string& num_classes_hint) {
  if (args.train.empty() || args.val.empty()) throw UsageError("--train and --val are required");
  if (args.num_classes == 0) throw UsageError("--num-classes is required" + num_classes_hint);
  if (args.mode.empty()) args.mode = args.weights.empty() ? "scratch" : "finetune";
  if (args.mode == "scratch" && !args.weights.empty()) {
    throw UsageError("--mode scratch starts from random weights; drop --weights or choose finetune");
  }
  if (args.out.empty()) args.out = default_output_dir(task, args.model, args.resume);
  check_output_dir(args.out, args.resume);
}

// Runs a program: usage errors exit 2 with the usage text, run-time errors exit 1 with their
// message alone (a C++ backtrace says nothing to someone who passed a wrong file).
inline int main_of(const char* program, const Options& options, int argc, char** argv,
                   const std::function<void()>& check, const std::function<int()>& run) {
  try {
    options.parse(argc, argv);
    check();
  } catch (const UsageError& e) {
    std::cerr << program << ": " << e.what() << "\n" << options.usage();
    return 2;
  }
  try {
    return run();
  } catch (const c10::Error& e) {
    std::cerr << program << ": error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
  }
  return 1;
}

inline int64_t count_parameters(const torch::nn::Module& module, bool trainable_only) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) {
    if (!trainable_only || p.requires_grad()) n += p.numel();
  }
  return n;
}

}  // namespace torchtl::examples
