#pragma once
// Image decoding with TorchCodec's C++ ops (libjpeg-turbo, libpng, libwebp, giflib inside the
// torchcodec wheel), reached through the c10 dispatcher, plus a small BMP reader of our own
// (TorchCodec has no BMP decoder). Where TorchCodec's library cannot be loaded (an older torch),
// torchvision's image ops, when registered, decode instead. Safe to call from any thread without
// the GIL.
#include <torch/types.h>

#include <string>
#include <vector>

namespace torchtl::data {

// torchvision.io.ImageReadMode values, which TorchCodec's ops take too.
enum class ReadMode : int64_t { Unchanged = 0, Gray = 1, GrayAlpha = 2, RGB = 3, RGBAlpha = 4 };

enum class ImageBackend { TorchCodec, TorchVision };

// Chooses the decoders, once per process, and returns the choice. TorchCodec's ops when they are
// registered already (in Python, `import torchcodec`), else its image library
// (libtorchcodec_image.so, which links torch but not libpython) is loaded from `library`, else
// $TORCHTL_TORCHCODEC_LIBRARY, else the path CMake found. When that fails and torchvision's image
// ops are registered (in Python, `import torchvision`), those decode instead, and
// image_backend_fallback_reason() says why. $TORCHTL_IMAGE_BACKEND=torchcodec|torchvision forces
// one. Throws, naming what was tried, when neither can decode. Decoding calls this itself (and
// then warns once about a fallback); thread-safe.
ImageBackend load_image_ops(const std::string& library = "");

// Why torchvision's ops decode instead of TorchCodec's; empty when TorchCodec's do.
std::string image_backend_fallback_reason();

// True when load_image_ops() succeeds.
bool image_ops_available();

// The file's bytes as a 1-D uint8 tensor. Missing files throw FileNotFoundError naming the path.
torch::Tensor read_file(const std::string& path);

// True when `data` starts like a JPEG file (what decode_jpegs_rgb takes).
bool is_jpeg(const torch::Tensor& data);

// 3 x H x W uint8 RGB, EXIF orientation applied, as torchvision.io.decode_image(data,
// ImageReadMode.RGB, apply_exif_orientation=True) followed by v2.ToDtype(uint8, scale=True)
// for 16-bit PNGs. JPEG (also gray and CMYK), PNG (gray, palette, alpha, 16 bit), WebP, GIF (the
// first frame) and BMP (uncompressed 1/4/8-bit palette, 16, 24 and 32 bit); anything else throws
// a ValueError saying so.
torch::Tensor decode_rgb(const torch::Tensor& data);

// read_file then decode_rgb: an image file as 3 x H x W uint8 RGB; a decoding error names the path.
torch::Tensor read_image(const std::string& path);

// A batch of JPEGs decoded on `device` (CUDA, nvJPEG) as decode_rgb decodes each on the CPU.
std::vector<torch::Tensor> decode_jpegs_rgb(const std::vector<torch::Tensor>& data, const torch::Device& device);

// The orientation (1 to 8) a JPEG's EXIF segment gives, 1 (upright) when it has none: what
// decode_rgb applies and nvJPEG does not.
int jpeg_exif_orientation(const torch::Tensor& data);

// decode_rgb's images, decoded on `device`. On a CUDA device the JPEGs among them are decoded in
// one nvJPEG call (pixels as decode_rgb's up to nvJPEG's IDCT); the other images, and JPEGs whose
// EXIF orientation turns them (which nvJPEG ignores), are decoded by decode_rgb and copied there.
std::vector<torch::Tensor> decode_rgb_on(const std::vector<torch::Tensor>& data, const torch::Device& device);

// Writes a 1 x H x W (gray) or 3 x H x W (RGB) uint8 image as a PNG file, with TorchCodec's encoder.
void write_png(const torch::Tensor& image, const std::string& path);

// H x W class indices (uint8, or int32 for 16-bit PNGs), exactly the stored values: palette
// indices for palette PNGs, gray values for gray PNGs; never colour-converted. Masks that
// decode to more than one channel throw.
torch::Tensor decode_mask(const torch::Tensor& data);

}  // namespace torchtl::data
