#include "io/weights.h"

#include "io/pretrained.h"
#include "io/torch_save.h"
#include "models/module_tree.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/csrc/jit/serialization/import.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <unordered_map>

namespace torchtl::io {
namespace {

void append_state(const torch::nn::Module& module, const std::string& prefix, StateDict& out) {
  for (const auto& p : module.named_parameters(/*recurse=*/false)) out.emplace_back(prefix + p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/false)) out.emplace_back(prefix + b.key(), b.value());
  for (const auto& child : module.named_children()) append_state(*child.value(), prefix + child.key() + ".", out);
}

// A wrong architecture mismatches hundreds of keys; the first few say enough.
std::string join(const std::vector<std::string>& items, size_t limit = 20) {
  std::ostringstream out;
  for (size_t i = 0; i < items.size() && i < limit; ++i) out << (i ? ", " : "") << items[i];
  if (items.size() > limit) out << ", ... (" << items.size() - limit << " more)";
  return out.str();
}

std::string counted(size_t n, const char* what) {
  return std::to_string(n) + " " + what + (n == 1 ? "" : "s");
}

bool is_state_dict(const c10::impl::GenericDict& dict) {
  if (dict.size() == 0) return false;
  for (const auto& entry : dict) {
    if (!entry.key().isString() || !entry.value().isTensor()) return false;
  }
  return true;
}

StateDict from_pickled(const c10::IValue& value, const std::string& path) {
  TORCH_CHECK_VALUE(value.isGenericDict(), "'", path, "' holds a ", value.tagKind(), ", not a state dict");
  auto dict = value.toGenericDict();
  if (!is_state_dict(dict)) {
    for (const char* key : {"model", "state_dict"}) {
      auto it = dict.find(c10::IValue(std::string(key)));
      if (it != dict.end() && it->value().isGenericDict()) return from_pickled(it->value(), path);
    }
    // A state dict with a stray value: name it, rather than calling the whole dict no state dict.
    bool has_tensor = false;
    for (const auto& entry : dict) has_tensor = has_tensor || entry.value().isTensor();
    for (const auto& entry : dict) {
      if (!has_tensor) break;
      TORCH_CHECK_VALUE(entry.key().isString(), "'", path, "' holds a state dict with a ", entry.key().tagKind(),
                        " key, not a name");
      TORCH_CHECK_VALUE(entry.value().isTensor(), "'", path, "': state dict key '", entry.key().toStringRef(),
                        "' holds a ", entry.value().tagKind(), ", not a tensor");
    }
    TORCH_CHECK_VALUE(false, "'", path, "' holds a dict that is neither a state dict (names to tensors) nor a ",
                      "checkpoint with one under 'model' or 'state_dict'");
  }
  StateDict out;
  out.reserve(dict.size());
  for (const auto& entry : dict) out.emplace_back(entry.key().toStringRef(), entry.value().toTensor());
  return out;
}

}  // namespace

StateDict state_dict(const torch::nn::Module& module) {
  StateDict out;
  append_state(module, "", out);
  return out;
}

LoadResult load_state_dict(torch::nn::Module& module, const StateDict& weights, bool strict) {
  auto own = state_dict(module);
  std::unordered_map<std::string, torch::Tensor*> by_name;
  for (auto& [name, tensor] : own) by_name.emplace(name, &tensor);

  LoadResult result;
  std::vector<std::string> wrong_shapes;
  std::unordered_map<std::string, bool> seen;
  for (const auto& [name, tensor] : weights) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      result.unexpected_keys.push_back(name);
      continue;
    }
    seen[name] = true;
    if (it->second->sizes() != tensor.sizes()) {
      std::ostringstream why;
      why << name << " (weights " << tensor.sizes() << ", model " << it->second->sizes() << ")";
      wrong_shapes.push_back(why.str());
    }
  }
  for (const auto& [name, tensor] : own) {
    if (!seen.count(name)) result.missing_keys.push_back(name);
  }
  const bool fail = !wrong_shapes.empty() || (strict && (!result.missing_keys.empty() || !result.unexpected_keys.empty()));
  if (fail) {
    std::ostringstream msg;
    msg << "Error(s) in loading weights into " << models::module_info(module).type << ":";
    if (!result.missing_keys.empty()) msg << "\n  " << counted(result.missing_keys.size(), "missing key") << ": " << join(result.missing_keys);
    if (!result.unexpected_keys.empty())
      msg << "\n  " << counted(result.unexpected_keys.size(), "unexpected key") << ": " << join(result.unexpected_keys);
    if (!wrong_shapes.empty()) msg << "\n  " << counted(wrong_shapes.size(), "wrongly shaped key") << ": " << join(wrong_shapes);
    TORCH_CHECK_VALUE(false, msg.str());
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : weights) {
    auto it = by_name.find(name);
    if (it != by_name.end()) it->second->copy_(tensor);
  }
  return result;
}

StateDict read_weights(const std::string& path) {
  {
    std::ifstream probe(path, std::ios::binary);
    TORCH_CHECK(probe.good(), "cannot open weights file '", path, "': no such file or not readable");
  }
  bool scripted = false;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    scripted = reader.hasRecord("constants.pkl");
  } catch (const c10::Error&) {
    TORCH_CHECK_VALUE(false, "'", path, "' is not a PyTorch archive (expected torch.save or torch.jit.save output)");
  }
  if (scripted) {
    auto archive = torch::jit::load(path, torch::kCPU);
    StateDict out;
    for (const auto& p : archive.named_parameters(/*recurse=*/true)) out.emplace_back(p.name, p.value);
    for (const auto& b : archive.named_buffers(/*recurse=*/true)) out.emplace_back(b.name, b.value);
    return strip_module_prefix(std::move(out));
  }
  return strip_module_prefix(from_pickled(read_torch_save(path), path));
}

LoadResult load_weights(torch::nn::Module& module, const std::string& path, bool strict) {
  return load_state_dict(module, read_weights(path), strict);
}

void save_pickle(const c10::IValue& value, const std::string& path,
                 const std::vector<std::pair<std::string, std::string>>& extra_records) {
  // torch::pickle_save would tag dicts with their C++ type, which torch.load(weights_only=True)
  // refuses; an untagged pickle in torch.save's zip layout loads as plain dicts and lists.
  std::vector<char> pickled;
  torch::jit::Pickler pickler([&](const char* data, size_t size) { pickled.insert(pickled.end(), data, data + size); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
                              /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();
  // Written beside the target, flushed to disk and renamed over it: a crash at any moment leaves
  // either the previous file or the new one, never half of one.
  const std::string tmp = path + ".tmp";
  {
    caffe2::serialize::PyTorchStreamWriter writer(tmp);
    writer.writeRecord("data.pkl", pickled.data(), pickled.size());
    const auto& tensors = pickler.tensorData();
    for (size_t i = 0; i < tensors.size(); ++i) {
      auto data = torch::jit::getWriteableTensorData(tensors[i]);
      writer.writeRecord("data/" + std::to_string(i), data.data(), data.sizeInBytes());
    }
    for (const auto& [name, bytes] : extra_records) writer.writeRecord(name, bytes.data(), bytes.size());
    writer.writeEndOfFile();
  }
  int fd = ::open(tmp.c_str(), O_RDONLY);
  TORCH_CHECK(fd >= 0, "cannot reopen '", tmp, "' to flush it");
  const int synced = ::fsync(fd);
  ::close(fd);
  TORCH_CHECK(synced == 0, "cannot flush '", tmp, "' to disk");
  TORCH_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path, "'");
}

c10::IValue to_ivalue(const StateDict& weights) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& [name, tensor] : weights) dict.insert(name, tensor.detach().cpu());
  return c10::IValue(dict);
}

void save_state_dict(const StateDict& weights, const std::string& path) { save_pickle(to_ivalue(weights), path); }

c10::IValue load_pickle(const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  TORCH_CHECK(probe.good(), "cannot open '", path, "': no such file or not readable");
  return read_torch_save(path);
}

void save_weights(const torch::nn::Module& module, const std::string& path) {
  save_state_dict(state_dict(module), path);
}

}  // namespace torchtl::io
