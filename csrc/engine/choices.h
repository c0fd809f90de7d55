#pragma once
// The values fit()'s string options take (task, mode, optimizer, lr_schedule, amp), beside
// TORCHTL_FIT_OPTIONS (options.h) but light to include: the files that check one option need only this.
#include <c10/util/Exception.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

namespace torchtl::engine {

// The values each string option takes, defined once: fit()'s checks, the Python binding
// (FIT_CHOICES), the torchtl command's choices and the Python twin all read them here.
inline const std::map<std::string, std::vector<std::string>>& fit_option_choices() {
  static const std::map<std::string, std::vector<std::string>> choices{
      {"task", {"classification", "segmentation"}},
      {"mode", {"scratch", "finetune", "feature_extractor"}},
      {"optimizer", {"sgd", "adam", "adamw"}},
      {"lr_schedule", {"constant", "step", "cosine", "poly"}},
      {"amp", {"off", "fp16", "bf16"}},
  };
  return choices;
}

// Throws ValueError ("unknown mode 'x'; choose scratch, finetune or feature_extractor", then
// `hint`) unless `value` is one of the choices of option `name`.
inline void check_fit_choice(const std::string& name, const std::string& value, const std::string& hint = "") {
  const auto& choices = fit_option_choices().at(name);
  if (std::find(choices.begin(), choices.end(), value) != choices.end()) return;
  std::string list;
  for (size_t i = 0; i < choices.size(); ++i) {
    list += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
  }
  TORCH_CHECK_VALUE(false, "unknown ", name, " '", value, "'; choose ", list, hint);
}

}  // namespace torchtl::engine
