// Decoding in a C++ program: torchvision's image library, loaded at run time (data/image.h),
// decodes what its own encoder wrote, bit for bit, and bad bytes raise a named error.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <fstream>

#include "data/image.h"
#include "data/map_file.h"
#include "harness.h"

namespace data = torchtl::data;
using torchtl::testing::contains;
using torchtl::testing::scratch_path;

namespace {

torch::Tensor encode_png(const torch::Tensor& image) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("image::encode_png", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(image.contiguous(), 6);
}

std::string write_bytes(const std::string& name, const torch::Tensor& bytes) {
  const auto path = scratch_path(name);
  std::ofstream(path, std::ios::binary).write(static_cast<const char*>(bytes.data_ptr()), bytes.numel());
  return path;
}

}  // namespace

TORCHTL_TEST(loads_torchvision_and_round_trips_a_png) {
  data::load_image_ops();
  EXPECT(data::image_ops_available());
  torch::manual_seed(0);
  const auto rgb = torch::randint(0, 256, {3, 20, 30}, torch::kUInt8);
  const auto path = write_bytes("rgb.png", encode_png(rgb));
  const auto decoded = data::decode_rgb(data::read_file(path));
  EXPECT(decoded.sizes() == rgb.sizes() && decoded.equal(rgb)) << decoded.sizes();

  // A gray image becomes RGB with three equal channels; as a mask it keeps its values.
  const auto gray = torch::randint(0, 256, {1, 8, 9}, torch::kUInt8);
  const auto bytes = data::read_file(write_bytes("gray.png", encode_png(gray)));
  const auto as_rgb = data::decode_rgb(bytes);
  EXPECT(as_rgb.size(0) == 3 && as_rgb[0].equal(gray[0]) && as_rgb[2].equal(gray[0]));
  EXPECT(data::decode_mask(bytes).equal(gray[0]));
  EXPECT(contains(THROWN_MESSAGE(data::decode_mask(data::read_file(path))), "3 channels"));
}

TORCHTL_TEST(bad_bytes_and_missing_files_are_named) {
  data::load_image_ops();
  const auto garbage = write_bytes("garbage.png", torch::arange(64, torch::kUInt8));
  EXPECT(contains(THROWN_MESSAGE(data::decode_rgb(data::read_file(garbage))), "Unsupported image file"));
  bool not_found = false;
  try {
    data::read_file(scratch_path("nothing.png"));
  } catch (const data::FileNotFoundError& e) {
    not_found = contains(e.what_without_backtrace(), "nothing.png' does not exist");
  }
  EXPECT(not_found) << "expected FileNotFoundError naming the path";
}
