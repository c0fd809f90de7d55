// How load_image_ops() fails, before torchvision's image library is loaded: so this suite needs a
// process of its own (ctest runs `torchtl_tests image_loading`); in a process where the ops are
// already registered it skips.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>

#include "data/image.h"
#include "data/map_file.h"
#include "harness.h"

namespace data = torchtl::data;
using torchtl::testing::contains;
using torchtl::testing::scratch_path;

namespace {

void require_fresh_process() {
  if (c10::Dispatcher::singleton().findSchema({"image::decode_image", ""}).has_value()) {
    SKIP("torchvision's image ops are already registered; run `torchtl_tests image_loading` on its own");
  }
}

}  // namespace

TORCHTL_TEST(a_missing_library_is_named_with_where_its_path_came_from) {
  require_fresh_process();
  const auto path = scratch_path("no_such_image_stable.so");
  bool not_found = false;
  std::string message;
  try {
    data::load_image_ops(path);
  } catch (const data::FileNotFoundError& e) {
    not_found = true;
    message = e.what_without_backtrace();
  }
  EXPECT(not_found) << "expected FileNotFoundError";
  EXPECT(contains(message, "'" + path + "' (from the path given) does not exist")) << message;
  EXPECT(contains(message, "TORCHTL_TORCHVISION_LIBRARY")) << message;

  const char* before = std::getenv("TORCHTL_TORCHVISION_LIBRARY");
  const std::string saved = before ? before : "";
  ::setenv("TORCHTL_TORCHVISION_LIBRARY", path.c_str(), 1);
  message = THROWN_MESSAGE(data::load_image_ops());
  if (before) {
    ::setenv("TORCHTL_TORCHVISION_LIBRARY", saved.c_str(), 1);
  } else {
    ::unsetenv("TORCHTL_TORCHVISION_LIBRARY");
  }
  EXPECT(contains(message, "(from $TORCHTL_TORCHVISION_LIBRARY) does not exist")) << message;
}

TORCHTL_TEST(a_file_that_is_not_a_library_is_refused_with_dlopens_reason) {
  require_fresh_process();
  const auto path = scratch_path("not_a_library.so");
  std::ofstream(path) << "not an ELF file\n";
  const auto message = THROWN_MESSAGE(data::load_image_ops(path));
  EXPECT(contains(message, "cannot load torchvision's image library '" + path + "' (from the path given)")) << message;
}

TORCHTL_TEST(the_configured_library_registers_the_ops) {
  require_fresh_process();
  // From $TORCHTL_TORCHVISION_LIBRARY, else the path CMake found; a failure names both.
  data::load_image_ops();
  EXPECT(c10::Dispatcher::singleton().findSchema({"image::decode_image", ""}).has_value());
  EXPECT(c10::Dispatcher::singleton().findSchema({"image::read_file", ""}).has_value());
}
