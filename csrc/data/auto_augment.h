#pragma once
// torchvision.transforms.v2's automatic augmentation policies (TrivialAugmentWide, RandAugment,
// AutoAugment, AugMix) and RandomErasing on C x H x W tensors, with the ops of their augmentation
// space. As in transforms.h: the same ATen ops in the same order and the same random draws in the
// same order, so a transform seeded with s returns what v2 returns after torch.manual_seed(s).
// fill is v2's default (None: zeros outside the image, no fill mask).
#include "data/transforms.h"

#include <optional>
#include <string>
#include <vector>

namespace torchtl::data {

// v2.functional kernels for image tensors (uint8 or float, ... x C x H x W).
// affine: v2.functional.affine(angle, translate, scale, shear, interpolation, fill=None, center),
// angle and shear in degrees, center in pixels (std::nullopt: the image centre).
torch::Tensor affine(const torch::Tensor& image, double angle, std::array<double, 2> translate, double scale,
                     std::array<double, 2> shear, Interpolation interpolation,
                     std::optional<std::array<double, 2>> center = std::nullopt);
// v2.functional.rotate(angle, interpolation, expand=False, center=None, fill=None).
torch::Tensor rotate(const torch::Tensor& image, double angle, Interpolation interpolation);
torch::Tensor adjust_brightness(const torch::Tensor& image, double factor);
torch::Tensor adjust_saturation(const torch::Tensor& image, double factor);
torch::Tensor adjust_contrast(const torch::Tensor& image, double factor);
torch::Tensor adjust_sharpness(const torch::Tensor& image, double factor);
torch::Tensor posterize(const torch::Tensor& image, int64_t bits);
torch::Tensor solarize(const torch::Tensor& image, double threshold);
torch::Tensor autocontrast(const torch::Tensor& image);
torch::Tensor equalize(const torch::Tensor& image);
torch::Tensor invert(const torch::Tensor& image);

// The ops of v2's augmentation spaces, under v2's names ("ShearX", "Posterize", ...).
enum class AugmentOp {
  Identity, ShearX, ShearY, TranslateX, TranslateY, Rotate, Brightness, Color, Contrast, Sharpness,
  Posterize, Solarize, AutoContrast, Equalize, Invert
};
AugmentOp augment_op(const std::string& name);
const char* augment_op_name(AugmentOp op);
// v2's _AutoAugmentBase._apply_image_or_video_transform: one op at one signed magnitude.
torch::Tensor apply_augment_op(const torch::Tensor& image, AugmentOp op, double magnitude,
                               Interpolation interpolation);

// Interpolation for the policies' geometric ops: v2 takes nearest and bilinear on tensors.
Interpolation augment_interpolation(const std::string& name);

struct TrivialAugmentWideOptions {
  TORCH_ARG(int64_t, num_magnitude_bins) = 31;
  TORCH_ARG(Interpolation, interpolation) = Interpolation::Nearest;
};

struct RandAugmentOptions {
  TORCH_ARG(int64_t, num_ops) = 2;
  TORCH_ARG(int64_t, magnitude) = 9;
  TORCH_ARG(int64_t, num_magnitude_bins) = 31;
  TORCH_ARG(Interpolation, interpolation) = Interpolation::Nearest;
};

struct AutoAugmentOptions {
  // AutoAugmentPolicy's value; "imagenet" is the one the references' recipes use.
  TORCH_ARG(std::string, policy) = "imagenet";
  TORCH_ARG(Interpolation, interpolation) = Interpolation::Nearest;
};

struct AugMixOptions {
  TORCH_ARG(int64_t, severity) = 3;
  TORCH_ARG(int64_t, mixture_width) = 3;
  TORCH_ARG(int64_t, chain_depth) = -1;  // < 1: drawn from [1, 3] per chain
  TORCH_ARG(double, alpha) = 1.0;
  TORCH_ARG(bool, all_ops) = true;
  TORCH_ARG(Interpolation, interpolation) = Interpolation::Bilinear;
};

// One of the four policies, as the references' --auto-augment names them: "ta_wide", "ra",
// "augmix", or an AutoAugmentPolicy value ("imagenet").
class AutoAugmentTransform {
 public:
  static AutoAugmentTransform trivial_augment_wide(TrivialAugmentWideOptions options);
  static AutoAugmentTransform rand_augment(RandAugmentOptions options);
  static AutoAugmentTransform auto_augment(AutoAugmentOptions options);
  static AutoAugmentTransform aug_mix(AugMixOptions options);
  // The references' presets: `policy` as --auto-augment, ra_magnitude and augmix_severity as
  // their flags, the preset's interpolation for every policy.
  static AutoAugmentTransform from_policy(const std::string& policy, Interpolation interpolation,
                                          int64_t ra_magnitude = 9, int64_t augmix_severity = 3);

  // image: uint8 C x H x W (C = 1 or 3); returns the same shape and dtype.
  torch::Tensor operator()(const torch::Tensor& image, at::Generator& generator) const;
  std::string repr() const;

 private:
  enum class Kind { TrivialAugmentWide, RandAugment, AutoAugment, AugMix };
  explicit AutoAugmentTransform(Kind kind) : kind_(kind) {}
  torch::Tensor trivial_augment_wide_call(const torch::Tensor& image, at::Generator& generator) const;
  torch::Tensor rand_augment_call(const torch::Tensor& image, at::Generator& generator) const;
  torch::Tensor auto_augment_call(const torch::Tensor& image, at::Generator& generator) const;
  torch::Tensor aug_mix_call(const torch::Tensor& image, at::Generator& generator) const;

  Kind kind_;
  TrivialAugmentWideOptions trivial_;
  RandAugmentOptions rand_;
  AutoAugmentOptions auto_;
  AugMixOptions mix_;
};

// v2.RandomErasing(p, scale, ratio, value): applied after Normalize in the references' preset, so
// it takes any dtype; value has 1 or C entries.
struct RandomErasingOptions {
  TORCH_ARG(double, p) = 0.5;
  TORCH_ARG(Range, scale) = Range{0.02, 0.33};
  TORCH_ARG(Range, ratio) = Range{0.3, 3.3};
  TORCH_ARG(std::vector<double>, value) = std::vector<double>{0.0};
};

class RandomErasing {
 public:
  explicit RandomErasing(RandomErasingOptions options);
  torch::Tensor operator()(const torch::Tensor& image, at::Generator& generator) const;
  const RandomErasingOptions& options() const { return options_; }
  std::string repr() const;

 private:
  RandomErasingOptions options_;
};

}  // namespace torchtl::data
