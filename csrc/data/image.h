#pragma once
// Image decoding with torchvision's own C++ ops (libjpeg-turbo, libpng, libwebp inside the
// torchvision wheel), reached through the c10 dispatcher: no decoder of ours, and the exact
// pixels torchvision.io.decode_image returns. Safe to call from any thread without the GIL.
#include <torch/torch.h>

#include <string>

namespace torchtl::data {

// torchvision.io.ImageReadMode values.
enum class ReadMode : int64_t { Unchanged = 0, Gray = 1, GrayAlpha = 2, RGB = 3, RGBAlpha = 4 };

// Makes torchvision's image ops available to this process, or throws an error naming the ways
// to provide them. A no-op when they are registered already (in Python, `import torchvision`
// registers them). Otherwise torchvision's image library is loaded from `library`, else
// $TORCHTL_TORCHVISION_LIBRARY, else the path CMake found beside the configuring Python's
// torchvision. Decoding calls this itself; thread-safe.
void load_image_ops(const std::string& library = "");

// True when torchvision's image ops are registered or load_image_ops() can load them.
bool image_ops_available();

// The file's bytes as a 1-D uint8 tensor (torchvision's image::read_file). Missing files throw
// FileNotFoundError naming the path.
torch::Tensor read_file(const std::string& path);

// 3 x H x W uint8 RGB, EXIF orientation applied, as torchvision.io.decode_image(data,
// ImageReadMode.RGB, apply_exif_orientation=True) followed by v2.ToDtype(uint8, scale=True)
// for 16-bit PNGs. Gray, RGBA and palette inputs are converted to RGB.
torch::Tensor decode_rgb(const torch::Tensor& data);

// H x W class indices (uint8, or int32 for 16-bit PNGs), exactly the stored values: palette
// indices for palette PNGs, gray values for gray PNGs; never colour-converted. Masks that
// decode to more than one channel throw.
torch::Tensor decode_mask(const torch::Tensor& data);

}  // namespace torchtl::data
