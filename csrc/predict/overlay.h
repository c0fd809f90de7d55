#pragma once
// A segmentation mask drawn over its image, as torchtl's tools draw it: class c in colour c of the
// PASCAL VOC palette, blended half and half with the image; class 0 (background) left as it is and
// 255 (the ignore index) white.
#include <torch/types.h>

namespace torchtl::predict {

// 21 x 3 uint8: the VOC palette's colours of classes 0 to 20 (higher classes take colour 20).
torch::Tensor voc_palette();

// uint8 3 x H x W image, H x W class indices -> uint8 3 x H x W.
torch::Tensor overlay_mask(const torch::Tensor& image, const torch::Tensor& mask, double alpha = 0.5);

}  // namespace torchtl::predict
