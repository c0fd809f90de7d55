#pragma once
// Image transforms that reproduce torchvision.transforms.v2 on tensors: the same ATen ops in
// the same order, and the same random draws in the same order from a torch::Generator, so a
// transform seeded with s returns what v2 returns after torch.manual_seed(s).
#include <torch/arg.h>
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace torchtl::data {

enum class Interpolation { Bilinear, Nearest };

// v2's _compute_resized_output_size for an int size: the shorter side becomes `size`, the longer
// side keeps the aspect ratio (truncated). Returns {height, width}.
std::array<int64_t, 2> resized_size(int64_t height, int64_t width, int64_t size);

// v2.functional.resize on a C x H x W tensor (bilinear is antialiased, as v2's default).
torch::Tensor resize(const torch::Tensor& image, int64_t height, int64_t width,
                     Interpolation mode = Interpolation::Bilinear);
// v2.functional.center_crop, zero-padding when the crop is larger than the image.
torch::Tensor center_crop(const torch::Tensor& image, int64_t height, int64_t width);
// v2.ToDtype(torch.float32, scale=True) then v2.Normalize(mean, std).
torch::Tensor to_float_normalized(const torch::Tensor& image, const std::vector<double>& mean,
                                  const std::vector<double>& std);

using Range = std::array<double, 2>;  // (min, max)

struct CropBox {
  int64_t top, left, height, width;
};
// v2.RandomResizedCrop.make_params: ten tries at a random area and log-uniform aspect ratio,
// then a central crop, drawing from `generator` exactly as v2 draws from torch's default one.
CropBox random_resized_crop_params(int64_t height, int64_t width, const Range& scale,
                                   const Range& ratio, at::Generator& generator);

// A per-sample generator: seeded from (seed, epoch, index) with a mixing function, so a sample's
// augmentation depends on nothing else (not on thread scheduling or batch composition).
at::Generator sample_generator(uint64_t seed, uint64_t epoch, uint64_t index);
uint64_t mix_seed(uint64_t seed, uint64_t epoch, uint64_t index);

const std::vector<double>& imagenet_mean();
const std::vector<double>& imagenet_std();

// torchvision references/classification presets. train: RandomResizedCrop(size) ->
// RandomHorizontalFlip(hflip_prob) -> ToDtype(float, scale) -> Normalize. eval: Resize(resize_size)
// -> CenterCrop(size) -> ToDtype(float, scale) -> Normalize.
struct ClassificationTransformOptions {
  TORCH_ARG(bool, train) = false;
  TORCH_ARG(int64_t, size) = 224;
  TORCH_ARG(int64_t, resize_size) = 256;
  TORCH_ARG(std::vector<double>, mean) = imagenet_mean();
  TORCH_ARG(std::vector<double>, std) = imagenet_std();
  TORCH_ARG(Range, scale) = Range{0.08, 1.0};
  TORCH_ARG(Range, ratio) = Range{3.0 / 4.0, 4.0 / 3.0};
  TORCH_ARG(double, hflip_prob) = 0.5;
};

class ClassificationTransform {
 public:
  explicit ClassificationTransform(ClassificationTransformOptions options);
  // uint8 3 x H x W -> float32 3 x size x size.
  torch::Tensor operator()(const torch::Tensor& image, at::Generator& generator) const;
  const ClassificationTransformOptions& options() const { return options_; }
  std::string repr() const;

 private:
  ClassificationTransformOptions options_;
};

// torchvision references/segmentation presets (their v2 flavour). train: RandomResize(0.5 x base,
// 2 x base) -> RandomHorizontalFlip -> pad to crop_size (image 0, mask 255) -> RandomCrop(crop_size)
// -> ToDtype(float, scale) -> Normalize; masks use nearest and become int64. eval: the shorter
// side resized to base_size (image bilinear, mask nearest), then ToDtype + Normalize.
struct SegmentationTransformOptions {
  TORCH_ARG(bool, train) = false;
  TORCH_ARG(int64_t, base_size) = 520;
  TORCH_ARG(int64_t, crop_size) = 480;
  TORCH_ARG(double, hflip_prob) = 0.5;
  TORCH_ARG(std::vector<double>, mean) = imagenet_mean();
  TORCH_ARG(std::vector<double>, std) = imagenet_std();
  TORCH_ARG(int64_t, ignore_index) = 255;
};

class SegmentationTransform {
 public:
  explicit SegmentationTransform(SegmentationTransformOptions options);
  // (uint8 3 x H x W image, H x W mask) -> (float32 3 x h x w, int64 h x w).
  std::pair<torch::Tensor, torch::Tensor> operator()(const torch::Tensor& image, const torch::Tensor& mask,
                                                     at::Generator& generator) const;
  // The evaluation transform of an image alone (prediction, where there is no mask): uint8
  // 3 x H x W -> float32 3 x h x w, the image that operator() returns in eval mode.
  torch::Tensor eval_image(const torch::Tensor& image) const;
  const SegmentationTransformOptions& options() const { return options_; }
  std::string repr() const;

 private:
  SegmentationTransformOptions options_;
};

}  // namespace torchtl::data
