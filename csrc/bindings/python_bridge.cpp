#include "bindings/python_bridge.h"

#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include "models/module_tree.h"

namespace py = pybind11;

namespace torchtl::bindings {
namespace {

// Python objects held by C++ objects that may die without the GIL (the loop releases it).
std::shared_ptr<py::object> hold(py::object object) {
  return std::shared_ptr<py::object>(new py::object(std::move(object)), [](py::object* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
}

torch::Tensor as_tensor(const py::handle& item, const std::string& what, const char* field) {
  TORCH_CHECK_TYPE(THPVariable_Check(item.ptr()), what, " must yield (images, targets) pairs of tensors, but its ",
                   field, " is a ", py::str(py::type::of(item).attr("__name__")).cast<std::string>());
  return THPVariable_Unpack(item.ptr());
}

class PythonModuleImpl : public torch::nn::Module, public models::EditableContainer {
 public:
  explicit PythonModuleImpl(py::object module)
      : torch::nn::Module(py::str(py::type::of(module).attr("__name__")).cast<std::string>()),
        module_(hold(module)) {
    adopt(module, *this);
  }

  torch::Tensor forward_as_tensor(const torch::Tensor& input) override {
    py::gil_scoped_acquire gil;
    const auto& module = *module_;
    // C++ train()/eval() set the flags of this mirror only; the Python forward reads its own.
    if (module.attr("training").cast<bool>() != is_training()) module.attr("train")(is_training());
    py::object out = module(input);
    TORCH_CHECK_TYPE(THPVariable_Check(out.ptr()), "fit runs a Python ", name(),
                     " as a classifier and needs its forward to return a tensor of logits, got a ",
                     py::str(py::type::of(out).attr("__name__")).cast<std::string>());
    return THPVariable_Unpack(out.ptr());
  }

  void replace_child(const std::string& name, std::shared_ptr<torch::nn::Module>) override {
    TORCH_CHECK_TYPE(false, "cannot replace ", name, " of a Python ", this->name(), " from C++; edit it in Python");
  }

 private:
  // Registers the Python module's tensors in `holder` and mirrors its children, recursively.
  static void adopt(const py::handle& module, torch::nn::Module& holder) {
    for (const auto& item : module.attr("_parameters").cast<py::dict>()) {
      if (item.second.is_none()) continue;
      auto p = THPVariable_Unpack(item.second.ptr());
      holder.register_parameter(item.first.cast<std::string>(), p, p.requires_grad());
    }
    const auto non_persistent = module.attr("_non_persistent_buffers_set");
    for (const auto& item : module.attr("_buffers").cast<py::dict>()) {
      // Not part of the state dict, so not part of checkpoints either.
      if (item.second.is_none() || non_persistent.contains(item.first)) continue;
      holder.register_buffer(item.first.cast<std::string>(), THPVariable_Unpack(item.second.ptr()));
    }
    for (const auto& item : module.attr("_modules").cast<py::dict>()) {
      if (item.second.is_none()) continue;
      auto child = std::make_shared<torch::nn::Module>(
          py::str(py::type::of(item.second).attr("__name__")).cast<std::string>());
      adopt(item.second, *child);
      holder.register_module(item.first.cast<std::string>(), child);
    }
  }

  std::shared_ptr<py::object> module_;
};

}  // namespace

PythonBatches::PythonBatches(py::object make_iterator, int64_t num_batches, std::string what)
    : make_iterator_(hold(std::move(make_iterator))), num_batches_(num_batches), what_(std::move(what)) {}

PythonBatches::~PythonBatches() = default;

std::function<std::optional<data::Batch>()> PythonBatches::epoch(uint64_t epoch) const {
  std::shared_ptr<py::object> iterator;
  {
    py::gil_scoped_acquire gil;
    iterator = hold((*make_iterator_)(epoch));
  }
  return [iterator, what = what_]() -> std::optional<data::Batch> {
    py::gil_scoped_acquire gil;
    py::object item = py::reinterpret_steal<py::object>(PyIter_Next(iterator->ptr()));
    if (!item) {
      if (PyErr_Occurred()) throw py::error_already_set();
      return std::nullopt;
    }
    TORCH_CHECK_TYPE(py::isinstance<py::sequence>(item) && !py::isinstance<py::str>(item) &&
                         !THPVariable_Check(item.ptr()) && py::len(item) == 2,
                     what,
                     " must yield (images, targets) pairs, got a ",
                     py::str(py::type::of(item).attr("__name__")).cast<std::string>());
    auto pair = item.cast<py::sequence>();
    data::Batch batch;
    batch.fields = {as_tensor(pair[0], what, "first item"), as_tensor(pair[1], what, "second item")};
    return batch;
  };
}

std::shared_ptr<torch::nn::Module> python_module(py::object module) {
  return std::make_shared<PythonModuleImpl>(std::move(module));
}

}  // namespace torchtl::bindings
