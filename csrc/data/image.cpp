#include "data/image.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <filesystem>

#include "data/map_file.h"

namespace torchtl::data {
namespace {

const c10::OperatorHandle* find_op(const char* name) {
  auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
  TORCH_CHECK(handle.has_value(), "torchvision's image op ", name,
              " is not registered: import torchvision (Python) or link libtorchvision (C++) before decoding images");
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

bool image_ops_available() {
  return c10::Dispatcher::singleton().findSchema({"image::decode_image", ""}).has_value() &&
         c10::Dispatcher::singleton().findSchema({"image::read_file", ""}).has_value();
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
