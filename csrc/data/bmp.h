#pragma once
// Windows bitmaps, which torchvision's ImageFolder lists (through PIL) but TorchCodec cannot
// decode: a small reader of the uncompressed layouts, giving PIL's pixels.
#include <torch/types.h>

namespace torchtl::data {

// 3 x H x W uint8 RGB, as PIL.Image.open(path).convert("RGB"). Reads 1, 4 and 8-bit palette
// images, 16-bit (5-5-5, or 5-6-5 with BI_BITFIELDS), 24-bit, and 32-bit (BI_RGB, or BI_BITFIELDS
// with 8-bit channel masks) ones, bottom-up or top-down, any header from BITMAPCOREHEADER to
// BITMAPV5HEADER; alpha is dropped. RLE-compressed and other layouts throw a ValueError naming them.
torch::Tensor bmp_to_rgb(const torch::Tensor& data);

}  // namespace torchtl::data
