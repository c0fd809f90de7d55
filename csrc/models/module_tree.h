#pragma once
// Walking and editing a model generically: what the Python face needs to mirror a C++ module
// tree as torch.nn modules, and what IntermediateLayerGetter needs to run any backbone's
// children in order. torch::nn gives no common forward() for a type-erased Module, so the few
// casts that need one live here, once, instead of in every forward().
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace torchtl::models {

// Implemented by torchtl's own container modules (ResNet, BasicBlock, ...): a forward reachable
// through the base class and children that can be swapped after construction (Python's
// `model.fc = nn.Linear(...)`, what LibTorch users do with unregister_module/register_module).
class EditableContainer {
 public:
  virtual ~EditableContainer() = default;
  // forward() reached through this base class, its result as one tensor (a segmentation model's
  // "out"); a module that returns several features throws c10::TypeError.
  virtual torch::Tensor forward_as_tensor(const torch::Tensor& input) = 0;
  // Throws c10::TypeError when `module` cannot stand in the named slot.
  virtual void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module> module) = 0;
};

// A module's forward as a callable, resolved once: torch::nn leaves, Sequential and
// EditableContainers.
using TensorForward = std::function<torch::Tensor(const torch::Tensor&)>;
TensorForward tensor_forward(const std::shared_ptr<torch::nn::Module>& module);

// Sets each module's training flag, `flags` in the pre-order of root.modules(include_self=true),
// so a submodule put in eval under a training parent (a frozen BatchNorm) stays in eval.
void set_training_flags(torch::nn::Module& root, const std::vector<bool>& flags);

// A torch::nn leaf held as an AnyModule (what a Sequential stores); throws for other types.
torch::nn::AnyModule to_any_module(const std::shared_ptr<torch::nn::Module>& module);

// Swaps `parent`'s child `name` for `module`; parent is a Sequential or an EditableContainer.
void replace_child(torch::nn::Module& parent, const std::string& name, std::shared_ptr<torch::nn::Module> module);

// For EditableContainer::replace_child: the typed member and the registry are updated together.
template <typename Holder>
void assign_child(torch::nn::Module& parent, const std::string& name, Holder& member,
                  const std::shared_ptr<torch::nn::Module>& module) {
  using Impl = typename Holder::ContainedType;
  auto typed = std::dynamic_pointer_cast<Impl>(module);
  TORCH_CHECK_TYPE(typed != nullptr, "cannot set ", name, " of ", parent.name(), ": expected ",
                   c10::demangle_type<Impl>(), ", got ", module ? module->name() : std::string("nothing"));
  member = Holder(typed);
  parent.replace_module(name, typed);
}

// Constructor arguments of a leaf module, named as torch.nn names them.
using OptionValue = std::variant<bool, int64_t, double, std::vector<int64_t>, std::string>;
using ModuleOptions = std::map<std::string, OptionValue>;

struct ModuleInfo {
  std::string type;       // torch.nn / torchvision class name: "Conv2d", "BasicBlock", ...
  ModuleOptions options;  // filled for torch::nn leaves; empty for containers
  // "Sequential" or "ModuleList" when the module is one (torchvision's heads subclass
  // nn.Sequential), so Python can index it; empty otherwise.
  std::string container;
};

ModuleInfo module_info(const torch::nn::Module& module);

// Builds a torch::nn leaf from torch.nn's constructor arguments (the inverse of module_info()).
std::shared_ptr<torch::nn::Module> make_module(const std::string& type, const ModuleOptions& options);

// Makes `module` hold exactly these tensors as its own parameters/buffers (same TensorImpl, not
// copies), so a torch.nn module handed over from Python keeps its identity after conversion.
void adopt_tensors(torch::nn::Module& module, const std::vector<std::pair<std::string, torch::Tensor>>& parameters,
                   const std::vector<std::pair<std::string, torch::Tensor>>& buffers);

}  // namespace torchtl::models
