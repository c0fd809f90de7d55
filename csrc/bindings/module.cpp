#include "bindings/bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "torchtl C++ core: models, weights I/O, data pipeline and training engine";
  torchtl::bindings::init_models(m);
  torchtl::bindings::init_io(m);
  torchtl::bindings::init_data(m);
  torchtl::bindings::init_engine(m);
  torchtl::bindings::init_predict(m);
}
