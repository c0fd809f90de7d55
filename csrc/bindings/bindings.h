#pragma once
// One init function per area, each in its own translation unit under csrc/bindings/.
// Bindings only translate between Python and C++: no logic lives here.
#include <pybind11/pybind11.h>

namespace torchtl::bindings {
void init_models(pybind11::module_& m);
void init_io(pybind11::module_& m);
void init_data(pybind11::module_& m);
void init_engine(pybind11::module_& m);
void init_predict(pybind11::module_& m);
}  // namespace torchtl::bindings
