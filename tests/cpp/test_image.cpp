// Decoding in a C++ program: TorchCodec's image library, loaded at run time (data/image.h),
// decodes what its own encoders wrote, bit for bit, with no libpython in the process; BMP goes
// through our reader; bad bytes raise a named error.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "data/image.h"
#include "data/map_file.h"
#include "harness.h"

namespace data = torchtl::data;
using torchtl::testing::contains;
using torchtl::testing::scratch_path;

namespace {

std::string write_png(const std::string& name, const torch::Tensor& image) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchcodec_ns::encode_png_to_file", "")
                       .typed<void(const at::Tensor&, std::string, int64_t)>();
  const auto path = scratch_path(name);
  op.call(image.contiguous(), path, 6);
  return path;
}

std::string write_jpeg(const std::string& name, const torch::Tensor& image) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchcodec_ns::encode_jpeg_to_file", "")
                       .typed<void(const at::Tensor&, std::string, int64_t)>();
  const auto path = scratch_path(name);
  op.call(image.contiguous(), path, 90);
  return path;
}

std::string write_bytes(const std::string& name, const std::string& bytes) {
  const auto path = scratch_path(name);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

void put32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

// A bottom-up 24-bit BMP (BITMAPINFOHEADER) of a 3 x H x W uint8 image, rows padded to 4 bytes.
std::string bmp24(const torch::Tensor& rgb) {
  const auto h = static_cast<uint32_t>(rgb.size(1)), w = static_cast<uint32_t>(rgb.size(2));
  const uint32_t stride = (w * 3 + 3) / 4 * 4;
  std::string s = "BM";
  put32(s, 54 + stride * h);
  put32(s, 0);
  put32(s, 54);
  put32(s, 40);
  put32(s, w);
  put32(s, h);
  s += std::string("\x01\x00\x18\x00", 4);  // planes 1, 24 bits
  for (int i = 0; i < 6; ++i) put32(s, 0);
  const auto a = rgb.accessor<uint8_t, 3>();
  for (int64_t y = h - 1; y >= 0; --y) {
    std::string row;
    for (int64_t x = 0; x < w; ++x) {
      row.push_back(static_cast<char>(a[2][y][x]));
      row.push_back(static_cast<char>(a[1][y][x]));
      row.push_back(static_cast<char>(a[0][y][x]));
    }
    row.resize(stride, '\0');
    s += row;
  }
  return s;
}

bool libpython_mapped() {
  std::ifstream maps("/proc/self/maps");
  std::stringstream text;
  text << maps.rdbuf();
  return contains(text.str(), "libpython");
}

}  // namespace

TORCHTL_TEST(torchcodec_decodes_every_format_without_libpython) {
  EXPECT(data::load_image_ops() == data::ImageBackend::TorchCodec) << data::image_backend_fallback_reason();
  EXPECT(data::image_ops_available());
  torch::manual_seed(0);
  const auto rgb = torch::randint(0, 256, {3, 20, 30}, torch::kUInt8);
  const auto png = data::decode_rgb(data::read_file(write_png("rgb.png", rgb)));
  EXPECT(png.sizes() == rgb.sizes() && png.equal(rgb)) << png.sizes();

  // A gray image becomes RGB with three equal channels; as a mask it keeps its values.
  const auto gray = torch::randint(0, 256, {1, 8, 9}, torch::kUInt8);
  const auto bytes = data::read_file(write_png("gray.png", gray));
  const auto as_rgb = data::decode_rgb(bytes);
  EXPECT(as_rgb.size(0) == 3 && as_rgb[0].equal(gray[0]) && as_rgb[2].equal(gray[0]));
  EXPECT(data::decode_mask(bytes).equal(gray[0]));
  EXPECT(contains(THROWN_MESSAGE(data::decode_mask(data::read_file(scratch_path("rgb.png")))), "3 channels"));

  // A smooth JPEG comes back close to what was encoded (lossy), as RGB of the same size.
  const auto smooth = torch::linspace(0, 255, 32).to(torch::kUInt8).expand({3, 24, 32});
  const auto jpeg = data::decode_rgb(data::read_file(write_jpeg("smooth.jpg", smooth)));
  EXPECT(jpeg.sizes() == smooth.sizes());
  EXPECT((jpeg.to(torch::kInt32) - smooth.to(torch::kInt32)).abs().max().item<int>() <= 8);

  // BMP, which TorchCodec lacks, through our reader: odd width, so the rows carry padding.
  const auto small = torch::randint(0, 256, {3, 5, 7}, torch::kUInt8);
  const auto bmp = data::decode_rgb(data::read_file(write_bytes("small.bmp", bmp24(small))));
  EXPECT(bmp.equal(small)) << bmp;

  EXPECT(!libpython_mapped()) << "libpython is mapped into this process";
}

namespace {

// A JPEG's markers up to the start of scan, with an APP1 EXIF segment whose first IFD holds
// `entries` (tag, value) SHORT entries, in little- or big-endian TIFF order.
torch::Tensor jpeg_with_exif(bool little, const std::vector<std::pair<int, int>>& entries) {
  std::string tiff = little ? std::string("II*\0\x08\0\0\0", 8) : std::string("MM\0*\0\0\0\x08", 8);
  auto u16 = [&](int v) {
    const char lo = static_cast<char>(v & 0xFF), hi = static_cast<char>(v >> 8);
    tiff += little ? std::string{lo, hi} : std::string{hi, lo};
  };
  u16(static_cast<int>(entries.size()));
  for (const auto& [tag, value] : entries) {
    u16(tag);
    u16(3);  // SHORT
    u16(little ? 1 : 0);
    u16(little ? 0 : 1);  // count 1
    u16(value);
    u16(0);
  }
  std::string app1 = std::string("Exif\0\0", 6) + tiff;
  const size_t length = app1.size() + 2;
  std::string bytes = std::string("\xFF\xD8\xFF\xE0\x00\x04\x00\x00\xFF\xE1", 10);
  bytes += std::string{static_cast<char>(length >> 8), static_cast<char>(length & 0xFF)} + app1 + "\xFF\xDA";
  return torch::from_blob(bytes.data(), {static_cast<int64_t>(bytes.size())}, torch::kUInt8).clone();
}

}  // namespace

// What the GPU decode path (decode_rgb_on) reads to send turned JPEGs to the CPU decoder.
TORCHTL_TEST(jpeg_exif_orientation_reads_both_byte_orders) {
  EXPECT(data::jpeg_exif_orientation(jpeg_with_exif(true, {{0x010F, 7}, {0x0112, 6}})) == 6);
  EXPECT(data::jpeg_exif_orientation(jpeg_with_exif(false, {{0x0112, 8}})) == 8);
  EXPECT(data::jpeg_exif_orientation(jpeg_with_exif(true, {{0x010F, 3}})) == 1);  // no orientation tag
  auto plain = data::read_file(write_jpeg("plain.jpg", torch::zeros({3, 8, 8}, torch::kUInt8)));
  EXPECT(data::jpeg_exif_orientation(plain) == 1);
}

TORCHTL_TEST(bad_bytes_and_missing_files_are_named) {
  std::string garbage(64, '\0');
  for (int i = 0; i < 64; ++i) garbage[i] = static_cast<char>(i);
  EXPECT(contains(THROWN_MESSAGE(data::decode_rgb(data::read_file(write_bytes("garbage.png", garbage)))),
                  "unsupported image format (not JPEG, PNG, WebP, GIF or BMP"));
  EXPECT(contains(THROWN_MESSAGE(data::decode_rgb(data::read_file(write_bytes("empty.jpg", "")))), "the file is empty"));
  EXPECT(contains(THROWN_MESSAGE(data::decode_rgb(data::read_file(write_bytes("cut.bmp", "BM\x10\x00")))),
                  "truncated BMP file"));
  bool not_found = false;
  try {
    data::read_file(scratch_path("nothing.png"));
  } catch (const data::FileNotFoundError& e) {
    not_found = contains(e.what_without_backtrace(), "nothing.png' does not exist");
  }
  EXPECT(not_found) << "expected FileNotFoundError naming the path";
}
