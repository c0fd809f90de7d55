#pragma once
// What the example programs share: option parsing with usage errors (exit status 2) apart from
// run-time errors (exit status 1), and the threaded loader over a map-file dataset.
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/loader.h"

namespace torchtl::examples {

// A problem with the command line: reported with the usage text and exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// `--name value` options, each bound to a variable that holds its default.
class Options {
 public:
  explicit Options(std::string usage) : usage_(std::move(usage)) {}

  void text(const std::string& name, std::string* target, std::vector<std::string> choices = {}) {
    text_[name] = {target, std::move(choices)};
  }
  void integer(const std::string& name, int64_t* target, int64_t minimum) { integers_[name] = {target, minimum}; }
  // A real number > 0.
  void positive(const std::string& name, double* target) { reals_[name] = target; }

  void parse(int argc, char** argv) const {
    std::set<std::string> seen;
    for (int i = 1; i < argc; ++i) {
      const std::string option = argv[i];
      if (option == "-h" || option == "--help") {
        std::cout << usage_;
        std::exit(0);
      }
      if (!text_.count(option) && !integers_.count(option) && !reals_.count(option)) {
        throw UsageError("unknown option '" + option + "'");
      }
      if (!seen.insert(option).second) throw UsageError(option + " given twice");
      if (i + 1 >= argc) throw UsageError(option + " needs a value");
      const std::string value = argv[++i];
      if (auto t = text_.find(option); t != text_.end()) {
        const auto& choices = t->second.second;
        if (!choices.empty() && std::find(choices.begin(), choices.end(), value) == choices.end()) {
          std::string list;
          for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
          throw UsageError(option + " expects one of " + list + ", got '" + value + "'");
        }
        *t->second.first = value;
      } else if (auto n = integers_.find(option); n != integers_.end()) {
        *n->second.first = parse_integer(option, value, n->second.second);
      } else {
        *reals_.at(option) = parse_positive(option, value);
      }
    }
  }

  const std::string& usage() const { return usage_; }

 private:
  static int64_t parse_integer(const std::string& option, const std::string& text, int64_t minimum) {
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size() || value < minimum) {
      throw UsageError(option + " expects an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
    }
    return value;
  }

  static double parse_positive(const std::string& option, const std::string& text) {
    size_t used = 0;
    double value = 0;
    try {
      value = std::stod(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size() || !(value > 0)) {
      throw UsageError(option + " expects a number > 0, got '" + text + "'");
    }
    return value;
  }

  std::string usage_;
  std::map<std::string, std::pair<std::string*, std::vector<std::string>>> text_;
  std::map<std::string, std::pair<int64_t*, int64_t>> integers_;
  std::map<std::string, double*> reals_;
};

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

// torchtl's threaded loader over a MapDataset or SegmentationMapDataset.
template <typename Dataset>
data::ThreadedLoader make_loader(std::shared_ptr<Dataset> dataset, const data::LoaderOptions& options) {
  const auto size = dataset->map_file().entries.size();
  return data::ThreadedLoader(
      [dataset](size_t index, uint64_t epoch) {
        auto example = dataset->load(index, epoch);
        return std::vector<torch::Tensor>{example.data, example.target};
      },
      [dataset](size_t index) { return dataset->describe(index); }, size, options);
}

inline int64_t count_parameters(const torch::nn::Module& module, bool trainable_only) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) {
    if (!trainable_only || p.requires_grad()) n += p.numel();
  }
  return n;
}

}  // namespace torchtl::examples
