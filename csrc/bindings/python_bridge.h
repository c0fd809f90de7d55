#pragma once
// The engine's bridges to Python objects it cannot move into C++: a Python iterable of batches,
// and a torch.nn.Module whose forward stays in Python. Both take the GIL only while they touch
// Python; everything else of the C++ loop runs without it.
#include <pybind11/pybind11.h>
#include <torch/torch.h>

#include <memory>

#include "engine/batch_source.h"

namespace torchtl::bindings {

// A Python iterable of (images, targets) pairs (a torch.utils.data.DataLoader, a list, ...).
// `make_iterator(epoch)` returns the iterator of one pass; each batch is fetched under the GIL.
class PythonBatches : public engine::BatchSource {
 public:
  PythonBatches(pybind11::object make_iterator, int64_t num_batches, std::string what);
  ~PythonBatches() override;
  int64_t num_batches() const override { return num_batches_; }
  std::function<std::optional<data::Batch>()> epoch(uint64_t epoch) const override;

 private:
  std::shared_ptr<pybind11::object> make_iterator_;
  int64_t num_batches_;
  std::string what_;
};

// A C++ module around a Python torch.nn.Module: its parameters and buffers are the Python
// module's own tensors, registered under the same names (so state_dict, checkpoints and
// optimizers see them), and its forward calls the Python module under the GIL.
std::shared_ptr<torch::nn::Module> python_module(pybind11::object module);

}  // namespace torchtl::bindings
