#include "predict/overlay.h"

#include <torch/torch.h>

namespace torchtl::predict {

torch::Tensor voc_palette() {
  static const torch::Tensor palette =
      torch::tensor({0,   0,   0,   128, 0,   0,   0,   128, 0,   128, 128, 0,   0,   0,   128, 128, 0,   128, 0,   128, 128,
                     128, 128, 128, 64,  0,   0,   192, 0,   0,   64,  128, 0,   192, 128, 0,   64,  0,   128, 192, 0,   128,
                     64,  128, 128, 192, 128, 128, 0,   64,  0,   128, 64,  0,   0,   192, 0,   128, 192, 0,   0,   64,  128},
                    torch::kUInt8)
          .view({21, 3});
  return palette.clone();
}

torch::Tensor overlay_mask(const torch::Tensor& image, const torch::Tensor& mask, double alpha) {
  TORCH_CHECK_VALUE(image.dim() == 3 && image.size(0) == 3 && mask.dim() == 2 && mask.size(0) == image.size(1) &&
                        mask.size(1) == image.size(2),
                    "overlay_mask takes a 3 x H x W image and an H x W mask, got ", image.sizes(), " and ", mask.sizes());
  const auto palette = voc_palette();
  const auto m = mask.to(torch::kLong);
  auto colours = palette.index({m.clamp_max(palette.size(0) - 1)}).permute({2, 0, 1}).clone();
  colours.index_put_({torch::indexing::Slice(), m == 255}, 255);
  const auto blend = image.to(torch::kFloat) * (1 - alpha) + colours.to(torch::kFloat) * alpha;
  const auto keep = (m == 0).expand_as(blend);
  return torch::where(keep, image.to(torch::kFloat), blend).round().to(torch::kUInt8);
}

}  // namespace torchtl::predict
