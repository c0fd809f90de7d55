#include "data/image.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "data/map_file.h"

// Set by CMakeLists.txt from the configuring Python's torchvision; empty in the setup.py build,
// where `import torchvision` registers the ops.
#ifndef TORCHTL_DEFAULT_TORCHVISION_LIBRARY
#define TORCHTL_DEFAULT_TORCHVISION_LIBRARY ""
#endif
#ifndef TORCHTL_DEFAULT_PYTHON_LIBRARY
#define TORCHTL_DEFAULT_PYTHON_LIBRARY ""
#endif

namespace torchtl::data {
namespace {

namespace fs = std::filesystem;

// Why load torchvision's library at run time rather than link it or bring a decoder of our own:
// the ops live in torchvision's image library (image_stable.so, image.so before 0.28), a Python
// extension module with no stable name, soname or headers to link against, and it registers its
// ops with the dispatcher when loaded, exactly as `import torchvision` does in Python. Loading
// the very file Python uses gives C++ programs the same libjpeg-turbo/libpng/libwebp and the same
// pixels as torchvision.io, with nothing to install beyond the torchvision wheel. RTLD_GLOBAL
// because the library's dependencies (and the ops' kernels) must resolve against the libtorch
// this process already has loaded. The library links libtorch_python (without using it), whose
// undefined CPython symbols only libpython provides: libpython is loaded for its symbols, and no
// interpreter is ever initialised.

bool ops_registered() {
  auto& dispatcher = c10::Dispatcher::singleton();
  return dispatcher.findSchema({"image::decode_image", ""}).has_value() &&
         dispatcher.findSchema({"image::read_file", ""}).has_value();
}

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// "" when `path` is loaded, else dlerror()'s reason.
std::string open_global(const std::string& path) {
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) return "";
  const char* why = dlerror();
  return why ? why : "unknown dlopen error";
}

// The folder of the libtorch_cpu this process runs on, where libtorch_python lies beside it.
fs::path torch_library_dir() {
  Dl_info info{};
  TORCH_CHECK(dladdr(reinterpret_cast<void*>(&at::_ops::empty_memory_format::call), &info) && info.dli_fname,
              "cannot find the folder of the loaded libtorch_cpu");
  return fs::path(info.dli_fname).parent_path();
}

// libpython (for its symbols only) and libtorch_python, so torchvision's image library resolves.
void load_torch_python(const std::string& image_library) {
  std::string python = env("TORCHTL_PYTHON_LIBRARY");
  const char* from = "$TORCHTL_PYTHON_LIBRARY";
  if (python.empty()) {
    python = TORCHTL_DEFAULT_PYTHON_LIBRARY;
    from = "CMake's TORCHTL_PYTHON_LIBRARY";
  }
  TORCH_CHECK(!python.empty(), "torchvision's image library '", image_library,
              "' needs libtorch_python, which needs libpython's symbols: set TORCHTL_PYTHON_LIBRARY to the "
              "libpython3.X.so of the Python that torch was installed for, or configure torchtl with "
              "-DTORCHTL_PYTHON_LIBRARY=...");
  auto error = open_global(python);
  TORCH_CHECK(error.empty(), "cannot load libpython '", python, "' (from ", from, "): ", error);
  const auto torch_python = (torch_library_dir() / "libtorch_python.so").string();
  error = open_global(torch_python);
  TORCH_CHECK(error.empty(), "cannot load '", torch_python, "': ", error);
}

const c10::OperatorHandle* find_op(const char* name) {
  load_image_ops();
  auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
  TORCH_CHECK(handle.has_value(), "torchvision's image op ", name, " is not registered");
  // Deliberately never freed: handles stay valid while torchvision is loaded, which is for the
  // life of the process, and worker threads may still decode during interpreter shutdown.
  return new c10::OperatorHandle(*handle);
}

const c10::OperatorHandle& read_file_op() {
  static const c10::OperatorHandle* op = find_op("image::read_file");
  return *op;
}

const c10::OperatorHandle& decode_image_op() {
  static const c10::OperatorHandle* op = find_op("image::decode_image");
  return *op;
}

torch::Tensor decode(const torch::Tensor& data, ReadMode mode) {
  static auto op = decode_image_op().typed<at::Tensor(const at::Tensor&, int64_t, bool)>();
  return op.call(data, static_cast<int64_t>(mode), /*apply_exif_orientation=*/true);
}

}  // namespace

void load_image_ops(const std::string& library) {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (ops_registered()) return;

  std::string path = library;
  std::string from = "the path given";
  if (path.empty()) {
    path = env("TORCHTL_TORCHVISION_LIBRARY");
    from = "$TORCHTL_TORCHVISION_LIBRARY";
  }
  if (path.empty()) {
    path = TORCHTL_DEFAULT_TORCHVISION_LIBRARY;
    from = "CMake's TORCHTL_TORCHVISION_LIBRARY";
  }
  TORCH_CHECK(!path.empty(),
              "torchvision's image ops (image::decode_image, image::read_file) are not registered. In Python, "
              "import torchvision first. In C++, set the environment variable TORCHTL_TORCHVISION_LIBRARY to "
              "torchvision's image library (site-packages/torchvision/image_stable.so, or image.so before "
              "torchvision 0.28), or configure torchtl with CMake where a Python with torchvision is found "
              "(-DTORCHTL_TORCHVISION_PYTHON=/path/to/python, or -DTORCHTL_TORCHVISION_LIBRARY=/path/to/image_stable.so)");
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw FileNotFoundError("torchvision's image library '" + path + "' (from " + from +
                            ") does not exist; set TORCHTL_TORCHVISION_LIBRARY to its path");
  }
  auto error = open_global(path);
  if (!error.empty() && (error.find("libtorch_python") != std::string::npos || error.find("symbol: Py") != std::string::npos)) {
    load_torch_python(path);
    error = open_global(path);
  }
  TORCH_CHECK(error.empty(), "cannot load torchvision's image library '", path, "' (from ", from, "): ", error);
  TORCH_CHECK(ops_registered(), "'", path, "' (from ", from,
              ") loaded, but registers no image::decode_image / image::read_file op: is it torchvision's image "
              "library (image_stable.so or image.so)?");
}

bool image_ops_available() {
  try {
    load_image_ops();
    return true;
  } catch (const c10::Error&) {
    return false;
  }
}

torch::Tensor read_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw FileNotFoundError("'" + path + "' does not exist");
  static auto op = read_file_op().typed<at::Tensor(std::string)>();
  return op.call(path);
}

torch::Tensor decode_rgb(const torch::Tensor& data) {
  auto image = decode(data, ReadMode::RGB);
  if (image.scalar_type() == torch::kUInt16) {
    // v2.ToDtype(torch.uint8, scale=True) on uint16: divide by 2**8, truncate.
    image = image.to(torch::kInt32).bitwise_right_shift(8).to(torch::kUInt8);
  }
  TORCH_CHECK(image.scalar_type() == torch::kUInt8 && image.dim() == 3 && image.size(0) == 3,
              "decoded image has unexpected shape ", image.sizes(), " and dtype ", image.scalar_type());
  return image;
}

torch::Tensor decode_mask(const torch::Tensor& data) {
  auto mask = decode(data, ReadMode::Unchanged);
  TORCH_CHECK_VALUE(mask.dim() == 3 && mask.size(0) == 1, "a mask must decode to one channel (a palette or gray PNG) ",
                    "but this one has ", mask.size(0), " channels; colour masks are not converted to class indices");
  if (mask.scalar_type() == torch::kUInt16) return mask[0].to(torch::kInt32);
  return mask[0];
}

}  // namespace torchtl::data
