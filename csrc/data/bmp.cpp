#include "data/bmp.h"

#include <algorithm>
#include <array>
#include <cstdint>

namespace torchtl::data {
namespace {

// BITMAPINFOHEADER's compression values.
constexpr uint32_t kRGB = 0, kRLE8 = 1, kRLE4 = 2, kBitfields = 3, kAlphaBitfields = 6;

struct Reader {
  const uint8_t* p;
  size_t n;
  void need(size_t at, size_t bytes) const {
    TORCH_CHECK_VALUE(at + bytes <= n, "truncated BMP file: ", n, " bytes, needs ", at + bytes);
  }
  uint32_t u16(size_t at) const {
    need(at, 2);
    return uint32_t{p[at]} | (uint32_t{p[at + 1]} << 8);
  }
  uint32_t u32(size_t at) const {
    need(at, 4);
    return u16(at) | (u16(at + 2) << 16);
  }
};

// One 8-bit channel of a BI_BITFIELDS pixel: PIL reads only masks of 8 contiguous bits.
struct Channel {
  uint32_t shift = 0;
  explicit Channel(uint32_t mask) {
    TORCH_CHECK_VALUE(mask != 0, "BMP bitfields without a colour mask");
    while (!(mask & 1)) {
      mask >>= 1;
      ++shift;
    }
    TORCH_CHECK_VALUE(mask == 0xFF, "BMP bitfields with a channel that is not 8 bits wide are not supported");
  }
  uint8_t operator()(uint32_t pixel) const { return static_cast<uint8_t>(pixel >> shift); }
};

}  // namespace

torch::Tensor bmp_to_rgb(const torch::Tensor& data) {
  const Reader r{data.data_ptr<uint8_t>(), static_cast<size_t>(data.numel())};
  const uint32_t offset = r.u32(10);
  const uint32_t header = r.u32(14);
  int64_t width, height;
  uint32_t bits, compression = kRGB, colors = 0;
  size_t palette_entry = 4;
  if (header == 12) {  // BITMAPCOREHEADER (OS/2): 16-bit sizes, 3-byte palette entries
    width = r.u16(18);
    height = r.u16(20);
    bits = r.u16(24);
    palette_entry = 3;
  } else {
    TORCH_CHECK_VALUE(header >= 40, "BMP header of ", header, " bytes is not a known layout");
    width = static_cast<int32_t>(r.u32(18));
    height = static_cast<int32_t>(r.u32(22));
    bits = r.u16(28);
    compression = r.u32(30);
    colors = r.u32(46);
  }
  TORCH_CHECK_VALUE(compression != kRLE8 && compression != kRLE4,
                    "RLE-compressed BMP files are not supported; save it uncompressed, or as PNG");
  TORCH_CHECK_VALUE(compression == kRGB || compression == kBitfields || compression == kAlphaBitfields,
                    "BMP compression ", compression, " is not supported");
  const bool top_down = height < 0;
  height = top_down ? -height : height;
  TORCH_CHECK_VALUE(width > 0 && height > 0 && width <= (1 << 16) && height <= (1 << 16), "BMP size ", width, " x ",
                    height, " is not supported");

  // Palette (1, 4, 8 bits) or channel masks (16, 24, 32 bits).
  std::array<std::array<uint8_t, 3>, 256> palette{};
  std::array<uint32_t, 3> masks{};
  if (bits <= 8) {
    TORCH_CHECK_VALUE(bits == 1 || bits == 4 || bits == 8, "BMP with ", bits, " bits per pixel is not supported");
    const uint32_t entries = colors ? std::min<uint32_t>(colors, 256) : (1u << bits);
    for (uint32_t i = 0; i < entries; ++i) {
      const size_t at = 14 + header + i * palette_entry;
      r.need(at, 3);
      palette[i] = {r.p[at + 2], r.p[at + 1], r.p[at]};
    }
  } else {
    TORCH_CHECK_VALUE(bits == 16 || bits == 24 || bits == 32, "BMP with ", bits, " bits per pixel is not supported");
    if (compression == kRGB) {
      masks = bits == 16 ? std::array<uint32_t, 3>{0x7C00, 0x3E0, 0x1F} : std::array<uint32_t, 3>{0xFF0000, 0xFF00, 0xFF};
    } else {
      // In the header from BITMAPV2INFOHEADER on, right after a BITMAPINFOHEADER otherwise.
      for (size_t c = 0; c < 3; ++c) masks[c] = r.u32(14 + 40 + 4 * c);
    }
  }

  const size_t stride = ((static_cast<size_t>(width) * bits + 31) / 32) * 4;
  r.need(offset, stride * static_cast<size_t>(height));
  auto out = torch::empty({height, width, 3}, torch::kUInt8);
  auto* o = out.data_ptr<uint8_t>();
  if (bits == 16) {
    constexpr std::array<uint32_t, 3> k565{0xF800, 0x7E0, 0x1F}, k555{0x7C00, 0x3E0, 0x1F};
    const bool five_six_five = masks == k565;
    TORCH_CHECK_VALUE(five_six_five || masks == k555,
                      "16-bit BMP bitfields other than 5-5-5 and 5-6-5 are not supported");
    for (int64_t y = 0; y < height; ++y) {
      const uint8_t* row = r.p + offset + stride * static_cast<size_t>(top_down ? y : height - 1 - y);
      for (int64_t x = 0; x < width; ++x, o += 3) {
        const uint32_t v = row[2 * x] | (uint32_t{row[2 * x + 1]} << 8);
        // PIL's BGR;15 and BGR;16 unpackers: each field scaled to 0..255, truncating.
        if (five_six_five) {
          o[0] = static_cast<uint8_t>(((v >> 11) & 31) * 255 / 31);
          o[1] = static_cast<uint8_t>(((v >> 5) & 63) * 255 / 63);
        } else {
          o[0] = static_cast<uint8_t>(((v >> 10) & 31) * 255 / 31);
          o[1] = static_cast<uint8_t>(((v >> 5) & 31) * 255 / 31);
        }
        o[2] = static_cast<uint8_t>((v & 31) * 255 / 31);
      }
    }
  } else if (bits == 24 || bits == 32) {
    const Channel red(masks[0]), green(masks[1]), blue(masks[2]);
    const size_t bytes = bits / 8;
    for (int64_t y = 0; y < height; ++y) {
      const uint8_t* row = r.p + offset + stride * static_cast<size_t>(top_down ? y : height - 1 - y);
      for (int64_t x = 0; x < width; ++x, o += 3) {
        const uint8_t* px = row + bytes * static_cast<size_t>(x);
        const uint32_t v = px[0] | (uint32_t{px[1]} << 8) | (uint32_t{px[2]} << 16) |
                           (bytes == 4 ? uint32_t{px[3]} << 24 : 0u);
        o[0] = red(v);
        o[1] = green(v);
        o[2] = blue(v);
      }
    }
  } else {
    const uint32_t per_byte = 8 / bits, mask = (1u << bits) - 1;
    for (int64_t y = 0; y < height; ++y) {
      const uint8_t* row = r.p + offset + stride * static_cast<size_t>(top_down ? y : height - 1 - y);
      for (int64_t x = 0; x < width; ++x, o += 3) {
        const uint32_t k = static_cast<uint32_t>(x) % per_byte;
        const uint32_t index = (row[static_cast<uint32_t>(x) / per_byte] >> (8 - bits * (k + 1))) & mask;
        o[0] = palette[index][0];
        o[1] = palette[index][1];
        o[2] = palette[index][2];
      }
    }
  }
  return out.permute({2, 0, 1}).contiguous();
}

}  // namespace torchtl::data
