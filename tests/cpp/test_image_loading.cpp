// How load_image_ops() fails, before TorchCodec's image library is loaded: so this suite needs a
// process of its own (ctest runs `torchtl_tests image_loading`); in a process where the ops are
// already registered it skips. A C++ program has no torchvision ops to fall back on, so each
// failure throws and names where the path came from.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>

#include "data/image.h"
#include "harness.h"

namespace data = torchtl::data;
using torchtl::testing::contains;
using torchtl::testing::scratch_path;

namespace {

void require_fresh_process() {
  if (c10::Dispatcher::singleton().findSchema({"torchcodec_ns::decode_jpeg", ""}).has_value()) {
    SKIP("TorchCodec's image ops are already registered; run `torchtl_tests image_loading` on its own");
  }
}

// Runs `fn` with the environment variable `name` set to `value`, then restores it.
template <typename F>
std::string with_env(const char* name, const std::string& value, F&& fn) {
  const char* before = std::getenv(name);
  const std::string saved = before ? before : "";
  ::setenv(name, value.c_str(), 1);
  auto message = fn();
  if (before) {
    ::setenv(name, saved.c_str(), 1);
  } else {
    ::unsetenv(name);
  }
  return message;
}

}  // namespace

TORCHTL_TEST(a_missing_library_is_named_with_where_its_path_came_from) {
  require_fresh_process();
  const auto path = scratch_path("no_such_libtorchcodec_image.so");
  auto message = THROWN_MESSAGE(data::load_image_ops(path));
  EXPECT(contains(message, "'" + path + "' (from the path given) does not exist")) << message;
  EXPECT(contains(message, "TORCHTL_TORCHCODEC_LIBRARY")) << message;
  EXPECT(contains(message, "torchvision's image ops, the fallback, are not registered either")) << message;

  message = with_env("TORCHTL_TORCHCODEC_LIBRARY", path, [] { return THROWN_MESSAGE(data::load_image_ops()); });
  EXPECT(contains(message, "(from $TORCHTL_TORCHCODEC_LIBRARY) does not exist")) << message;
}

TORCHTL_TEST(a_file_that_is_not_a_library_is_refused_with_dlopens_reason) {
  require_fresh_process();
  const auto path = scratch_path("not_a_library.so");
  std::ofstream(path) << "not an ELF file\n";
  const auto message = THROWN_MESSAGE(data::load_image_ops(path));
  EXPECT(contains(message, "cannot load TorchCodec's image library '" + path + "' (from the path given)")) << message;
}

TORCHTL_TEST(the_backend_variable_is_checked) {
  require_fresh_process();
  auto message = with_env("TORCHTL_IMAGE_BACKEND", "pillow", [] { return THROWN_MESSAGE(data::load_image_ops()); });
  EXPECT(contains(message, "TORCHTL_IMAGE_BACKEND must be 'torchcodec' or 'torchvision', got 'pillow'")) << message;
  message = with_env("TORCHTL_IMAGE_BACKEND", "torchvision", [] { return THROWN_MESSAGE(data::load_image_ops()); });
  EXPECT(contains(message, "TORCHTL_IMAGE_BACKEND=torchvision; but torchvision's image ops are not registered"))
      << message;
}

TORCHTL_TEST(the_configured_library_registers_the_ops) {
  require_fresh_process();
  // From $TORCHTL_TORCHCODEC_LIBRARY, else the path CMake found; a failure names both.
  EXPECT(data::load_image_ops() == data::ImageBackend::TorchCodec);
  EXPECT(c10::Dispatcher::singleton().findSchema({"torchcodec_ns::decode_jpeg", ""}).has_value());
  EXPECT(c10::Dispatcher::singleton().findSchema({"torchcodec_ns::decode_png", ""}).has_value());
}
