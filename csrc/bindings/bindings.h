#pragma once
// One init function per area, each in its own translation unit under csrc/bindings/.
// Bindings only translate between Python and C++: no logic lives here.
#include <ATen/core/Generator.h>
#include <pybind11/pybind11.h>

#include <cstdint>

namespace torchtl::bindings {
void init_models(pybind11::module_& m);
void init_io(pybind11::module_& m);
void init_data(pybind11::module_& m);
void init_engine(pybind11::module_& m);
void init_predict(pybind11::module_& m);
// Into the data submodule that init_data made: the automatic augmentation policies and batch mixing.
void init_augment(pybind11::module_& m);
// Into the engine (and data) submodules: the references' recipe pieces (EMA, weight-decay groups,
// schedules, RASampler).
void init_recipe(pybind11::module_& m);

// A CPU generator seeded as torch.manual_seed(seed) seeds the default one.
at::Generator seeded(uint64_t seed);
// A Python integer as an unsigned 64-bit seed or epoch: a ValueError/TypeError naming `name`.
uint64_t unsigned_arg(const pybind11::handle& value, const char* name);
}  // namespace torchtl::bindings
