#include "data/auto_augment.h"

#include <cmath>
#include <sstream>

namespace torchtl::data {
namespace {

// Helper names carry an aa_ prefix: csrc/data/ compiles as one translation unit, where every
// file's anonymous namespace is the same one.

// CPython's float %: the result takes the divisor's sign (v2's `angle % 360`).
double aa_py_mod(double x, double m) {
  double r = std::fmod(x, m);
  if (r != 0.0) {
    if ((m < 0) != (r < 0)) r += m;
  } else {
    r = std::copysign(0.0, m);
  }
  return r;
}

// CPython's math.radians / math.degrees.
double aa_radians(double degrees) { return degrees * (M_PI / 180.0); }
double aa_degrees(double radians) { return radians * (180.0 / M_PI); }

int64_t aa_py_round(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

// torchvision's _max_value for the dtypes the policies take.
double aa_bound(const torch::Tensor& image) {
  if (image.is_floating_point()) return 1.0;
  TORCH_CHECK_VALUE(image.scalar_type() == torch::kUInt8, "auto augment ops take uint8 or floating-point images, got ",
                    image.scalar_type());
  return 255.0;
}

void aa_check_channels(const torch::Tensor& image, const char* op) {
  TORCH_CHECK_VALUE(image.dim() >= 3, op, " expects a ... x C x H x W image, got shape ", image.sizes());
  const auto c = image.size(-3);
  TORCH_CHECK_VALUE(c == 1 || c == 3, op, ": images have 1 or 3 channels, got ", c);
}

void aa_check_factor(double factor, const char* name) {
  TORCH_CHECK_VALUE(factor >= 0, name, " (", factor, ") is not non-negative.");
}

// v2's _get_inverse_affine_matrix (inverted=True), in double as Python computes it.
std::vector<double> aa_inverse_affine_matrix(std::array<double, 2> center, double angle, std::array<double, 2> translate,
                                             double scale, std::array<double, 2> shear) {
  const double rot = aa_radians(angle), sx = aa_radians(shear[0]), sy = aa_radians(shear[1]);
  const double cx = center[0], cy = center[1], tx = translate[0], ty = translate[1];
  const double cos_sy = std::cos(sy), tan_sx = std::tan(sx), rot_minus_sy = rot - sy;
  const double cx_plus_tx = cx + tx, cy_plus_ty = cy + ty;
  const double a = std::cos(rot_minus_sy) / cos_sy;
  const double b = -(a * tan_sx + std::sin(rot));
  const double c = std::sin(rot_minus_sy) / cos_sy;
  const double d = std::cos(rot) - c * tan_sx;
  std::vector<double> m{d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0};
  m[2] += cx - m[0] * cx_plus_tx - m[1] * cy_plus_ty;
  m[5] += cy - m[3] * cx_plus_tx - m[4] * cy_plus_ty;
  return m;
}

// v2's _affine_grid.
torch::Tensor aa_affine_grid(const torch::Tensor& theta, int64_t w, int64_t h, int64_t ow, int64_t oh) {
  const auto options = theta.options();
  auto base_grid = torch::empty({1, oh, ow, 3}, options);
  base_grid.select(-1, 0).copy_(torch::linspace((1.0 - ow) * 0.5, (ow - 1.0) * 0.5, ow, options));
  base_grid.select(-1, 1).copy_(torch::linspace((1.0 - oh) * 0.5, (oh - 1.0) * 0.5, oh, options).unsqueeze_(-1));
  base_grid.select(-1, 2).fill_(1);
  auto rescaled_theta = theta.transpose(1, 2).div_(torch::tensor({0.5 * w, 0.5 * h}, options));
  return base_grid.view({1, oh * ow, 3}).bmm(rescaled_theta).view({1, oh, ow, 2});
}

// v2's _apply_grid_transform with fill=None.
torch::Tensor aa_apply_grid_transform(const torch::Tensor& image, torch::Tensor grid, Interpolation mode) {
  auto output_shape = image.sizes().vec();
  const auto ndim = output_shape.size();
  const int64_t channels = output_shape[ndim - 3], in_h = output_shape[ndim - 2], in_w = output_shape[ndim - 1];
  output_shape[ndim - 2] = grid.size(1);
  output_shape[ndim - 1] = grid.size(2);
  if (image.numel() == 0) return image.reshape(output_shape);
  auto x = image.reshape({-1, channels, in_h, in_w});
  const bool fp = image.scalar_type() == grid.scalar_type();
  auto float_image = fp ? x : x.to(grid.scalar_type());
  if (x.size(0) > 1) grid = grid.expand({x.size(0), -1, -1, -1});
  // torch.nn.functional.grid_sample's enums: bilinear 0, nearest 1; padding "zeros" 0.
  float_image = at::grid_sampler(float_image, grid, mode == Interpolation::Nearest ? 1 : 0, 0, false);
  auto out = fp ? float_image : float_image.round_().to(image.scalar_type());
  return out.reshape(output_shape);
}

void aa_check_grid_interpolation(Interpolation mode) {
  TORCH_CHECK_VALUE(mode == Interpolation::Nearest || mode == Interpolation::Bilinear,
                    "affine and rotate on tensors take nearest or bilinear interpolation (as v2), not bicubic");
}

torch::Tensor aa_grid_dtype_theta(const torch::Tensor& image, const std::vector<double>& matrix) {
  const auto dtype = image.is_floating_point() ? image.scalar_type() : torch::kFloat32;
  return torch::tensor(matrix, torch::TensorOptions().dtype(torch::kFloat64))
      .to(torch::TensorOptions().dtype(dtype).device(image.device()))
      .reshape({1, 2, 3});
}

// v2's _rgb_to_grayscale_image(num_output_channels=1, preserve_dtype=False) on 3 channels.
torch::Tensor aa_grayscale(const torch::Tensor& image) {
  auto rgb = image.unbind(-3);
  return rgb[0].mul(0.2989).add_(rgb[1], 0.587).add_(rgb[2], 0.114).unsqueeze(-3);
}

// v2's _blend.
torch::Tensor aa_blend(const torch::Tensor& image1, const torch::Tensor& image2, double ratio) {
  auto output = image1.mul(ratio).add_(image2, 1.0 - ratio).clamp_(0, aa_bound(image1));
  return image1.is_floating_point() ? output : output.to(image1.scalar_type());
}

using Magnitudes = torch::Tensor (*)(int64_t bins, int64_t height, int64_t width);

// One entry of an _AUGMENTATION_SPACE dict, in the dict's order (the order randint indexes).
struct SpaceEntry {
  AugmentOp op;
  Magnitudes magnitudes;  // nullptr: v2's `lambda ...: None`
  bool is_signed;
};

torch::Tensor aa_posterize_bins(int64_t bins, double top, double step_divisor) {
  auto steps = torch::arange(bins) / ((static_cast<double>(bins) - 1.0) / step_divisor);
  return torch::rsub(steps, top).round().to(torch::kInt32);
}

// RandAugment's space; AutoAugment's is the same without Identity and with Invert.
const std::vector<SpaceEntry>& rand_augment_space() {
  static const std::vector<SpaceEntry> space{
      {AugmentOp::Identity, nullptr, false},
      {AugmentOp::ShearX, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.3, n); }, true},
      {AugmentOp::ShearY, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.3, n); }, true},
      {AugmentOp::TranslateX, [](int64_t n, int64_t, int64_t w) { return torch::linspace(0.0, 150.0 / 331.0 * w, n); },
       true},
      {AugmentOp::TranslateY, [](int64_t n, int64_t h, int64_t) { return torch::linspace(0.0, 150.0 / 331.0 * h, n); },
       true},
      {AugmentOp::Rotate, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 30.0, n); }, true},
      {AugmentOp::Brightness, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.9, n); }, true},
      {AugmentOp::Color, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.9, n); }, true},
      {AugmentOp::Contrast, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.9, n); }, true},
      {AugmentOp::Sharpness, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.9, n); }, true},
      {AugmentOp::Posterize, [](int64_t n, int64_t, int64_t) { return aa_posterize_bins(n, 8.0, 4.0); }, false},
      {AugmentOp::Solarize, [](int64_t n, int64_t, int64_t) { return torch::linspace(1.0, 0.0, n); }, false},
      {AugmentOp::AutoContrast, nullptr, false},
      {AugmentOp::Equalize, nullptr, false},
  };
  return space;
}

const SpaceEntry& auto_augment_entry(AugmentOp op) {
  static const std::vector<SpaceEntry> space = [] {
    std::vector<SpaceEntry> s(rand_augment_space().begin() + 1, rand_augment_space().end());
    s.push_back({AugmentOp::Invert, nullptr, false});
    return s;
  }();
  for (const auto& entry : space) {
    if (entry.op == op) return entry;
  }
  TORCH_CHECK(false, "AutoAugment has no op ", augment_op_name(op));
}

const std::vector<SpaceEntry>& trivial_augment_space() {
  static const std::vector<SpaceEntry> space{
      {AugmentOp::Identity, nullptr, false},
      {AugmentOp::ShearX, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.99, n); }, true},
      {AugmentOp::ShearY, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.99, n); }, true},
      {AugmentOp::TranslateX, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 32.0, n); }, true},
      {AugmentOp::TranslateY, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 32.0, n); }, true},
      {AugmentOp::Rotate, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 135.0, n); }, true},
      {AugmentOp::Brightness, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.99, n); }, true},
      {AugmentOp::Color, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.99, n); }, true},
      {AugmentOp::Contrast, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.99, n); }, true},
      {AugmentOp::Sharpness, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.99, n); }, true},
      {AugmentOp::Posterize, [](int64_t n, int64_t, int64_t) { return aa_posterize_bins(n, 8.0, 6.0); }, false},
      {AugmentOp::Solarize, [](int64_t n, int64_t, int64_t) { return torch::linspace(1.0, 0.0, n); }, false},
      {AugmentOp::AutoContrast, nullptr, false},
      {AugmentOp::Equalize, nullptr, false},
  };
  return space;
}

const std::vector<SpaceEntry>& aug_mix_space(bool all_ops) {
  static const std::vector<SpaceEntry> partial{
      {AugmentOp::ShearX, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.3, n); }, true},
      {AugmentOp::ShearY, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.3, n); }, true},
      {AugmentOp::TranslateX, [](int64_t n, int64_t, int64_t w) { return torch::linspace(0.0, w / 3.0, n); }, true},
      {AugmentOp::TranslateY, [](int64_t n, int64_t h, int64_t) { return torch::linspace(0.0, h / 3.0, n); }, true},
      {AugmentOp::Rotate, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 30.0, n); }, true},
      {AugmentOp::Posterize, [](int64_t n, int64_t, int64_t) { return aa_posterize_bins(n, 4.0, 4.0); }, false},
      {AugmentOp::Solarize, [](int64_t n, int64_t, int64_t) { return torch::linspace(1.0, 0.0, n); }, false},
      {AugmentOp::AutoContrast, nullptr, false},
      {AugmentOp::Equalize, nullptr, false},
  };
  static const std::vector<SpaceEntry> all = [] {
    auto s = partial;
    s.push_back({AugmentOp::Brightness, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.9, n); }, true});
    s.push_back({AugmentOp::Color, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.9, n); }, true});
    s.push_back({AugmentOp::Contrast, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.9, n); }, true});
    s.push_back({AugmentOp::Sharpness, [](int64_t n, int64_t, int64_t) { return torch::linspace(0.0, 0.9, n); }, true});
    return s;
  }();
  return all_ops ? all : partial;
}

// _get_random_item: torch.randint(len(keys), ()).
const SpaceEntry& aa_random_entry(const std::vector<SpaceEntry>& space, at::Generator& generator) {
  const auto index = torch::randint(static_cast<int64_t>(space.size()), {}, generator).item<int64_t>();
  return space[static_cast<size_t>(index)];
}

// `torch.rand(()) <= p`, compared in float32 as the tensor comparison does.
bool aa_rand_at_most(at::Generator& generator, double p) {
  return torch::rand({}, generator).item<float>() <= static_cast<float>(p);
}

// The magnitude at `index` of the entry's bins, negated on a coin flip when the op is signed.
double aa_signed_magnitude(const SpaceEntry& entry, const torch::Tensor& magnitudes, int64_t index,
                           at::Generator& generator) {
  double magnitude = magnitudes[index].item<double>();
  if (entry.is_signed && aa_rand_at_most(generator, 0.5)) magnitude *= -1;
  return magnitude;
}

struct ImagenetPolicyStep {
  AugmentOp op;
  double probability;
  int64_t magnitude_index;  // -1: v2's None
};
using PolicyPair = std::array<ImagenetPolicyStep, 2>;

const std::vector<PolicyPair>& imagenet_policies() {
  using A = AugmentOp;
  static const std::vector<PolicyPair> policies{
      {{{A::Posterize, 0.4, 8}, {A::Rotate, 0.6, 9}}},
      {{{A::Solarize, 0.6, 5}, {A::AutoContrast, 0.6, -1}}},
      {{{A::Equalize, 0.8, -1}, {A::Equalize, 0.6, -1}}},
      {{{A::Posterize, 0.6, 7}, {A::Posterize, 0.6, 6}}},
      {{{A::Equalize, 0.4, -1}, {A::Solarize, 0.2, 4}}},
      {{{A::Equalize, 0.4, -1}, {A::Rotate, 0.8, 8}}},
      {{{A::Solarize, 0.6, 3}, {A::Equalize, 0.6, -1}}},
      {{{A::Posterize, 0.8, 5}, {A::Equalize, 1.0, -1}}},
      {{{A::Rotate, 0.2, 3}, {A::Solarize, 0.6, 8}}},
      {{{A::Equalize, 0.6, -1}, {A::Posterize, 0.4, 6}}},
      {{{A::Rotate, 0.8, 8}, {A::Color, 0.4, 0}}},
      {{{A::Rotate, 0.4, 9}, {A::Equalize, 0.6, -1}}},
      {{{A::Equalize, 0.0, -1}, {A::Equalize, 0.8, -1}}},
      {{{A::Invert, 0.6, -1}, {A::Equalize, 1.0, -1}}},
      {{{A::Color, 0.6, 4}, {A::Contrast, 1.0, 8}}},
      {{{A::Rotate, 0.8, 8}, {A::Color, 1.0, 2}}},
      {{{A::Color, 0.8, 8}, {A::Solarize, 0.8, 7}}},
      {{{A::Sharpness, 0.4, 7}, {A::Invert, 0.6, -1}}},
      {{{A::ShearX, 0.6, 5}, {A::Equalize, 1.0, -1}}},
      {{{A::Color, 0.4, 0}, {A::Equalize, 0.6, -1}}},
      {{{A::Equalize, 0.4, -1}, {A::Solarize, 0.2, 4}}},
      {{{A::Solarize, 0.6, 5}, {A::AutoContrast, 0.6, -1}}},
      {{{A::Invert, 0.6, -1}, {A::Equalize, 1.0, -1}}},
      {{{A::Color, 0.6, 4}, {A::Contrast, 1.0, 8}}},
      {{{A::Equalize, 0.8, -1}, {A::Equalize, 0.6, -1}}},
  };
  return policies;
}

void aa_check_policy_image(const torch::Tensor& image, const char* name) {
  TORCH_CHECK_VALUE(image.dim() == 3, name, " expects a C x H x W image, got shape ", image.sizes());
  TORCH_CHECK_VALUE(image.scalar_type() == torch::kUInt8, name, " expects a uint8 image, got ", image.scalar_type());
  aa_check_channels(image, name);
}

}  // namespace

torch::Tensor affine(const torch::Tensor& image, double angle, std::array<double, 2> translate, double scale,
                     std::array<double, 2> shear, Interpolation interpolation,
                     std::optional<std::array<double, 2>> center) {
  aa_check_grid_interpolation(interpolation);
  TORCH_CHECK_VALUE(scale > 0.0, "affine: scale should be positive, got ", scale);
  TORCH_CHECK_VALUE(image.dim() >= 3, "affine expects a ... x C x H x W image, got shape ", image.sizes());
  const int64_t height = image.size(-2), width = image.size(-1);
  std::array<double, 2> center_f{0.0, 0.0};
  if (center) center_f = {(*center)[0] - width * 0.5, (*center)[1] - height * 0.5};
  const auto theta = aa_grid_dtype_theta(image, aa_inverse_affine_matrix(center_f, angle, translate, scale, shear));
  return aa_apply_grid_transform(image, aa_affine_grid(theta, width, height, width, height), interpolation);
}

torch::Tensor rotate(const torch::Tensor& image, double angle, Interpolation interpolation) {
  TORCH_CHECK_VALUE(image.dim() >= 3, "rotate expects a ... x C x H x W image, got shape ", image.sizes());
  angle = aa_py_mod(angle, 360.0);
  // v2's fast paths: exact transposes instead of a resampling.
  if (angle == 0) return image.clone();
  if (angle == 180) return torch::rot90(image, 2, {-2, -1});
  if (image.size(-1) == image.size(-2)) {
    if (angle == 90) return torch::rot90(image, 1, {-2, -1});
    if (angle == 270) return torch::rot90(image, 3, {-2, -1});
  }
  aa_check_grid_interpolation(interpolation);
  const int64_t height = image.size(-2), width = image.size(-1);
  // v2 negates the angle: rotate and affine turn in opposite directions.
  const auto theta = aa_grid_dtype_theta(image, aa_inverse_affine_matrix({0.0, 0.0}, -angle, {0.0, 0.0}, 1.0, {0.0, 0.0}));
  return aa_apply_grid_transform(image, aa_affine_grid(theta, width, height, width, height), interpolation);
}

torch::Tensor adjust_brightness(const torch::Tensor& image, double factor) {
  aa_check_factor(factor, "brightness_factor");
  aa_check_channels(image, "adjust_brightness");
  auto output = image.mul(factor).clamp_(0, aa_bound(image));
  return image.is_floating_point() ? output : output.to(image.scalar_type());
}

torch::Tensor adjust_saturation(const torch::Tensor& image, double factor) {
  aa_check_factor(factor, "saturation_factor");
  aa_check_channels(image, "adjust_saturation");
  if (image.size(-3) == 1) return image;  // as PIL
  auto gray = aa_grayscale(image);
  if (!image.is_floating_point()) gray = gray.floor_();
  return aa_blend(image, gray, factor);
}

torch::Tensor adjust_contrast(const torch::Tensor& image, double factor) {
  aa_check_factor(factor, "contrast_factor");
  aa_check_channels(image, "adjust_contrast");
  const bool fp = image.is_floating_point();
  torch::Tensor gray;
  if (image.size(-3) == 3) {
    gray = aa_grayscale(image);
    if (!fp) gray = gray.floor_();
  } else {
    gray = fp ? image : image.to(torch::kFloat32);
  }
  return aa_blend(image, torch::mean(gray, {-3, -2, -1}, /*keepdim=*/true), factor);
}

torch::Tensor adjust_sharpness(const torch::Tensor& image, double factor) {
  aa_check_channels(image, "adjust_sharpness");
  aa_check_factor(factor, "sharpness_factor");
  const int64_t channels = image.size(-3), height = image.size(-2), width = image.size(-1);
  if (image.numel() == 0 || height <= 2 || width <= 2) return image;
  const double bound = aa_bound(image);
  const bool fp = image.is_floating_point();
  const auto shape = image.sizes().vec();
  auto x = image.dim() > 4 ? image.reshape({-1, channels, height, width}) : image;
  const auto kernel_dtype = fp ? image.scalar_type() : torch::kFloat32;
  const double a = 1.0 / 13.0, b = 5.0 / 13.0;
  auto kernel = torch::tensor({a, a, a, a, b, a, a, a, a}, torch::TensorOptions().dtype(torch::kFloat64))
                    .to(torch::TensorOptions().dtype(kernel_dtype).device(image.device()))
                    .view({3, 3})
                    .expand({channels, 1, 3, 3});
  auto output = x.to(kernel_dtype, /*non_blocking=*/false, /*copy=*/true);
  auto blurred = at::conv2d(output, kernel, std::nullopt, at::IntArrayRef{1, 1}, at::IntArrayRef{0, 0},
                            at::IntArrayRef{1, 1}, channels);
  if (!fp) blurred = blurred.round_();
  auto view = output.slice(-2, 1, -1).slice(-1, 1, -1);
  view.add_(blurred.sub_(view), 1.0 - factor);
  output = output.clamp_(0, bound);
  if (!fp) output = output.to(image.scalar_type());
  return image.dim() > 4 ? output.reshape(shape) : output;
}

torch::Tensor posterize(const torch::Tensor& image, int64_t bits) {
  TORCH_CHECK_VALUE(0 <= bits && bits <= 8, "posterize: bits must be in [0, 8], got ", bits);
  if (image.is_floating_point()) {
    const int64_t levels = int64_t{1} << bits;
    return image.mul(levels).floor_().clamp_(0, levels - 1).mul_(1.0 / levels);
  }
  aa_bound(image);
  if (bits >= 8) return image;
  const int64_t mask = ((int64_t{1} << bits) - 1) << (8 - bits);
  return image.bitwise_and(mask);
}

torch::Tensor invert(const torch::Tensor& image) {
  if (image.is_floating_point()) return torch::rsub(image, 1.0);
  aa_bound(image);
  return image.bitwise_not();
}

torch::Tensor solarize(const torch::Tensor& image, double threshold) {
  TORCH_CHECK_VALUE(threshold <= aa_bound(image),
                    "solarize: threshold should be at most the dtype's maximum value, got ", threshold);
  return torch::where(image >= threshold, invert(image), image);
}

torch::Tensor autocontrast(const torch::Tensor& image) {
  aa_check_channels(image, "autocontrast");
  if (image.numel() == 0) return image;
  const double bound = aa_bound(image);
  const bool fp = image.is_floating_point();
  auto float_image = fp ? image : image.to(torch::kFloat32);
  auto minimum = float_image.amin({-2, -1}, /*keepdim=*/true);
  auto maximum = float_image.amax({-2, -1}, /*keepdim=*/true);
  const auto eq = maximum == minimum;
  auto inv_scale = maximum.sub_(minimum).mul_(1.0 / bound);
  minimum.masked_fill_(eq, 0.0);
  inv_scale.masked_fill_(eq, 1.0);
  auto diff = fp ? float_image.sub(minimum) : float_image.sub_(minimum);
  return diff.div_(inv_scale).clamp_(0, bound).to(image.scalar_type());
}

torch::Tensor equalize(const torch::Tensor& image) {
  TORCH_CHECK_VALUE(image.scalar_type() == torch::kUInt8, "equalize takes uint8 images, got ", image.scalar_type());
  TORCH_CHECK_VALUE(image.dim() >= 2, "equalize expects a ... x H x W image, got shape ", image.sizes());
  if (image.numel() == 0) return image;
  // v2's histogram equalisation with PIL's lookup table: lut[k] = (cum_hist[k-1] + step // 2) // step.
  auto batch_shape = image.sizes().slice(0, image.dim() - 2).vec();
  auto flat_image = image.flatten(-2).to(torch::kLong);
  auto hist_shape = batch_shape;
  hist_shape.push_back(256);
  auto hist = flat_image.new_zeros(hist_shape, torch::kInt32);
  hist.scatter_add_(-1, flat_image, hist.new_ones({1}).expand_as(flat_image));
  auto cum_hist = hist.cumsum(-1);
  auto index = cum_hist.argmax(-1);
  auto num_non_max_pixels = torch::rsub(hist.gather(-1, index.unsqueeze_(-1)), flat_image.size(-1));
  auto step = num_non_max_pixels.div_(255, "floor");
  const auto valid_equalization = step.ne(0).unsqueeze_(-1);
  cum_hist = cum_hist.slice(-1, 0, -1);
  cum_hist.add_(step.floor_divide(2)).div_(step.clamp_(1), "floor").clamp_(0, 255);
  auto lut = cum_hist.to(torch::kUInt8);
  auto zero_shape = batch_shape;
  zero_shape.push_back(1);
  lut = torch::cat({lut.new_zeros({1}).expand(zero_shape), lut}, -1);
  auto equalized = lut.gather(-1, flat_image).view_as(image);
  return torch::where(valid_equalization, equalized, image);
}

AugmentOp augment_op(const std::string& name) {
  static const std::vector<std::pair<std::string, AugmentOp>> names{
      {"Identity", AugmentOp::Identity},     {"ShearX", AugmentOp::ShearX},
      {"ShearY", AugmentOp::ShearY},         {"TranslateX", AugmentOp::TranslateX},
      {"TranslateY", AugmentOp::TranslateY}, {"Rotate", AugmentOp::Rotate},
      {"Brightness", AugmentOp::Brightness}, {"Color", AugmentOp::Color},
      {"Contrast", AugmentOp::Contrast},     {"Sharpness", AugmentOp::Sharpness},
      {"Posterize", AugmentOp::Posterize},   {"Solarize", AugmentOp::Solarize},
      {"AutoContrast", AugmentOp::AutoContrast}, {"Equalize", AugmentOp::Equalize},
      {"Invert", AugmentOp::Invert},
  };
  std::ostringstream known;
  for (const auto& [key, op] : names) {
    if (key == name) return op;
    known << " " << key;
  }
  TORCH_CHECK_VALUE(false, "unknown augmentation op '", name, "'; known:", known.str());
}

const char* augment_op_name(AugmentOp op) {
  switch (op) {
    case AugmentOp::Identity: return "Identity";
    case AugmentOp::ShearX: return "ShearX";
    case AugmentOp::ShearY: return "ShearY";
    case AugmentOp::TranslateX: return "TranslateX";
    case AugmentOp::TranslateY: return "TranslateY";
    case AugmentOp::Rotate: return "Rotate";
    case AugmentOp::Brightness: return "Brightness";
    case AugmentOp::Color: return "Color";
    case AugmentOp::Contrast: return "Contrast";
    case AugmentOp::Sharpness: return "Sharpness";
    case AugmentOp::Posterize: return "Posterize";
    case AugmentOp::Solarize: return "Solarize";
    case AugmentOp::AutoContrast: return "AutoContrast";
    case AugmentOp::Equalize: return "Equalize";
    case AugmentOp::Invert: return "Invert";
  }
  return "?";
}

torch::Tensor apply_augment_op(const torch::Tensor& image, AugmentOp op, double magnitude, Interpolation interpolation) {
  switch (op) {
    case AugmentOp::Identity: return image;
    // v2 shears by atan(magnitude) degrees about the top-left corner (torchvision's tan convention).
    case AugmentOp::ShearX:
      return affine(image, 0.0, {0.0, 0.0}, 1.0, {aa_degrees(std::atan(magnitude)), 0.0}, interpolation,
                    std::array<double, 2>{0.0, 0.0});
    case AugmentOp::ShearY:
      return affine(image, 0.0, {0.0, 0.0}, 1.0, {0.0, aa_degrees(std::atan(magnitude))}, interpolation,
                    std::array<double, 2>{0.0, 0.0});
    case AugmentOp::TranslateX:
      return affine(image, 0.0, {static_cast<double>(static_cast<int64_t>(magnitude)), 0.0}, 1.0, {0.0, 0.0},
                    interpolation);
    case AugmentOp::TranslateY:
      return affine(image, 0.0, {0.0, static_cast<double>(static_cast<int64_t>(magnitude))}, 1.0, {0.0, 0.0},
                    interpolation);
    case AugmentOp::Rotate: return rotate(image, magnitude, interpolation);
    case AugmentOp::Brightness: return adjust_brightness(image, 1.0 + magnitude);
    case AugmentOp::Color: return adjust_saturation(image, 1.0 + magnitude);
    case AugmentOp::Contrast: return adjust_contrast(image, 1.0 + magnitude);
    case AugmentOp::Sharpness: return adjust_sharpness(image, 1.0 + magnitude);
    case AugmentOp::Posterize: return posterize(image, static_cast<int64_t>(magnitude));
    case AugmentOp::Solarize: return solarize(image, aa_bound(image) * magnitude);
    case AugmentOp::AutoContrast: return autocontrast(image);
    case AugmentOp::Equalize: return equalize(image);
    case AugmentOp::Invert: return invert(image);
  }
  TORCH_CHECK(false, "unhandled augmentation op");
}

Interpolation augment_interpolation(const std::string& name) {
  if (name == "nearest") return Interpolation::Nearest;
  if (name == "bilinear") return Interpolation::Bilinear;
  TORCH_CHECK_VALUE(false, "auto augment interpolation must be 'nearest' or 'bilinear' (v2 on tensors), got '", name,
                    "'");
}

AutoAugmentTransform AutoAugmentTransform::trivial_augment_wide(TrivialAugmentWideOptions options) {
  TORCH_CHECK_VALUE(options.num_magnitude_bins() >= 1, "TrivialAugmentWide: num_magnitude_bins must be positive");
  aa_check_grid_interpolation(options.interpolation());
  AutoAugmentTransform t(Kind::TrivialAugmentWide);
  t.trivial_ = std::move(options);
  return t;
}

AutoAugmentTransform AutoAugmentTransform::rand_augment(RandAugmentOptions options) {
  TORCH_CHECK_VALUE(options.num_ops() >= 0, "RandAugment: num_ops should be a non-negative integer, got ",
                    options.num_ops());
  TORCH_CHECK_VALUE(options.num_magnitude_bins() >= 1, "RandAugment: num_magnitude_bins must be positive");
  TORCH_CHECK_VALUE(options.magnitude() >= 0 && options.magnitude() < options.num_magnitude_bins(),
                    "RandAugment: magnitude must be in [0, num_magnitude_bins), got ", options.magnitude());
  aa_check_grid_interpolation(options.interpolation());
  AutoAugmentTransform t(Kind::RandAugment);
  t.rand_ = std::move(options);
  return t;
}

AutoAugmentTransform AutoAugmentTransform::auto_augment(AutoAugmentOptions options) {
  TORCH_CHECK_VALUE(options.policy() == "imagenet", "AutoAugment: policy '", options.policy(),
                    "' is not available; torchtl has torchvision's 'imagenet' policy");
  aa_check_grid_interpolation(options.interpolation());
  AutoAugmentTransform t(Kind::AutoAugment);
  t.auto_ = std::move(options);
  return t;
}

AutoAugmentTransform AutoAugmentTransform::aug_mix(AugMixOptions options) {
  TORCH_CHECK_VALUE(1 <= options.severity() && options.severity() <= 10,
                    "AugMix: the severity must be between [1, 10]. Got ", options.severity());
  TORCH_CHECK_VALUE(options.mixture_width() >= 1, "AugMix: mixture_width must be positive, got ",
                    options.mixture_width());
  TORCH_CHECK_VALUE(options.alpha() > 0, "AugMix: alpha must be positive, got ", options.alpha());
  aa_check_grid_interpolation(options.interpolation());
  AutoAugmentTransform t(Kind::AugMix);
  t.mix_ = std::move(options);
  return t;
}

AutoAugmentTransform AutoAugmentTransform::from_policy(const std::string& policy, Interpolation interpolation,
                                                       int64_t ra_magnitude, int64_t augmix_severity) {
  if (policy == "ta_wide") return trivial_augment_wide(TrivialAugmentWideOptions().interpolation(interpolation));
  if (policy == "ra") return rand_augment(RandAugmentOptions().magnitude(ra_magnitude).interpolation(interpolation));
  if (policy == "augmix") return aug_mix(AugMixOptions().severity(augmix_severity).interpolation(interpolation));
  TORCH_CHECK_VALUE(policy == "imagenet", "auto_augment must be 'ta_wide', 'ra', 'augmix' or 'imagenet', got '", policy,
                    "'");
  return auto_augment(AutoAugmentOptions().policy(policy).interpolation(interpolation));
}

torch::Tensor AutoAugmentTransform::operator()(const torch::Tensor& image, at::Generator& generator) const {
  switch (kind_) {
    case Kind::TrivialAugmentWide: return trivial_augment_wide_call(image, generator);
    case Kind::RandAugment: return rand_augment_call(image, generator);
    case Kind::AutoAugment: return auto_augment_call(image, generator);
    case Kind::AugMix: return aug_mix_call(image, generator);
  }
  TORCH_CHECK(false, "unhandled auto augment policy");
}

torch::Tensor AutoAugmentTransform::trivial_augment_wide_call(const torch::Tensor& image,
                                                              at::Generator& generator) const {
  aa_check_policy_image(image, "TrivialAugmentWide");
  const auto& o = trivial_;
  const auto& entry = aa_random_entry(trivial_augment_space(), generator);
  double magnitude = 0.0;
  if (entry.magnitudes) {
    const auto magnitudes = entry.magnitudes(o.num_magnitude_bins(), image.size(-2), image.size(-1));
    const auto index = torch::randint(o.num_magnitude_bins(), {}, generator).item<int64_t>();
    magnitude = aa_signed_magnitude(entry, magnitudes, index, generator);
  }
  return apply_augment_op(image, entry.op, magnitude, o.interpolation());
}

torch::Tensor AutoAugmentTransform::rand_augment_call(const torch::Tensor& image, at::Generator& generator) const {
  aa_check_policy_image(image, "RandAugment");
  const auto& o = rand_;
  auto x = image;
  for (int64_t i = 0; i < o.num_ops(); ++i) {
    const auto& entry = aa_random_entry(rand_augment_space(), generator);
    double magnitude = 0.0;
    if (entry.magnitudes) {
      const auto magnitudes = entry.magnitudes(o.num_magnitude_bins(), image.size(-2), image.size(-1));
      magnitude = aa_signed_magnitude(entry, magnitudes, o.magnitude(), generator);
    }
    x = apply_augment_op(x, entry.op, magnitude, o.interpolation());
  }
  return x;
}

torch::Tensor AutoAugmentTransform::auto_augment_call(const torch::Tensor& image, at::Generator& generator) const {
  aa_check_policy_image(image, "AutoAugment");
  const auto& policies = imagenet_policies();
  const auto pick = torch::randint(static_cast<int64_t>(policies.size()), {}, generator).item<int64_t>();
  auto x = image;
  for (const auto& step : policies[static_cast<size_t>(pick)]) {
    if (!aa_rand_at_most(generator, step.probability)) continue;
    const auto& entry = auto_augment_entry(step.op);
    double magnitude = 0.0;
    if (entry.magnitudes) {
      const auto magnitudes = entry.magnitudes(10, image.size(-2), image.size(-1));
      magnitude = aa_signed_magnitude(entry, magnitudes, step.magnitude_index, generator);
    }
    x = apply_augment_op(x, entry.op, magnitude, auto_.interpolation());
  }
  return x;
}

torch::Tensor AutoAugmentTransform::aug_mix_call(const torch::Tensor& image, at::Generator& generator) const {
  aa_check_policy_image(image, "AugMix");
  const auto& o = mix_;
  constexpr int64_t kParameterMax = 10;
  const int64_t height = image.size(-2), width = image.size(-1);
  const auto& space = aug_mix_space(o.all_ops());
  // v2 works on a batch of one: the ops see 1 x C x H x W, as here.
  auto batch = image.unsqueeze(0);
  const std::vector<int64_t> batch_dims{1, 1, 1, 1};
  const auto float_options = torch::TensorOptions().dtype(torch::kFloat32).device(image.device());
  // Beta(alpha, alpha) as a two-parameter Dirichlet: column 0 weighs the original image.
  const auto m = at::_sample_dirichlet(torch::full({2}, o.alpha(), float_options).expand({1, -1}), generator);
  const auto combined_weights =
      at::_sample_dirichlet(torch::full({o.mixture_width()}, o.alpha(), float_options).expand({1, -1}), generator) *
      m.select(1, 1).reshape({1, -1});
  auto mix = m.select(1, 0).reshape(batch_dims) * batch;
  for (int64_t i = 0; i < o.mixture_width(); ++i) {
    auto aug = batch;
    const int64_t depth =
        o.chain_depth() > 0 ? o.chain_depth() : torch::randint(1, 4, {1}, generator).item<int64_t>();
    for (int64_t d = 0; d < depth; ++d) {
      const auto& entry = aa_random_entry(space, generator);
      double magnitude = 0.0;
      if (entry.magnitudes) {
        const auto magnitudes = entry.magnitudes(kParameterMax, height, width);
        const auto index = torch::randint(o.severity(), {}, generator).item<int64_t>();
        magnitude = aa_signed_magnitude(entry, magnitudes, index, generator);
      }
      aug = apply_augment_op(aug, entry.op, magnitude, o.interpolation());
    }
    mix.add_(combined_weights.select(1, i).reshape(batch_dims) * aug);
  }
  return mix.reshape(image.sizes()).to(image.scalar_type());
}

std::string AutoAugmentTransform::repr() const {
  std::ostringstream out;
  switch (kind_) {
    case Kind::TrivialAugmentWide:
      out << "TrivialAugmentWide(num_magnitude_bins=" << trivial_.num_magnitude_bins()
          << ", interpolation=" << interpolation_name(trivial_.interpolation()) << ")";
      break;
    case Kind::RandAugment:
      out << "RandAugment(num_ops=" << rand_.num_ops() << ", magnitude=" << rand_.magnitude()
          << ", num_magnitude_bins=" << rand_.num_magnitude_bins()
          << ", interpolation=" << interpolation_name(rand_.interpolation()) << ")";
      break;
    case Kind::AutoAugment:
      out << "AutoAugment(policy=" << auto_.policy()
          << ", interpolation=" << interpolation_name(auto_.interpolation()) << ")";
      break;
    case Kind::AugMix:
      out << "AugMix(severity=" << mix_.severity() << ", mixture_width=" << mix_.mixture_width()
          << ", chain_depth=" << mix_.chain_depth() << ", alpha=" << mix_.alpha()
          << ", all_ops=" << (mix_.all_ops() ? "True" : "False")
          << ", interpolation=" << interpolation_name(mix_.interpolation()) << ")";
      break;
  }
  return out.str();
}

RandomErasing::RandomErasing(RandomErasingOptions options) : options_(std::move(options)) {
  const auto& o = options_;
  TORCH_CHECK_VALUE(o.p() >= 0.0 && o.p() <= 1.0, "RandomErasing: p must be in [0, 1], got ", o.p());
  TORCH_CHECK_VALUE(o.scale()[0] >= 0 && o.scale()[1] <= 1, "RandomErasing: scale should be between 0 and 1");
  TORCH_CHECK_VALUE(o.scale()[0] <= o.scale()[1] && o.ratio()[0] <= o.ratio()[1],
                    "RandomErasing: scale and ratio must be (min, max)");
  TORCH_CHECK_VALUE(!o.value().empty(), "RandomErasing: value needs 1 or C numbers");
}

torch::Tensor RandomErasing::operator()(const torch::Tensor& image, at::Generator& generator) const {
  const auto& o = options_;
  TORCH_CHECK_VALUE(image.dim() >= 3, "RandomErasing expects a ... x C x H x W image, got shape ", image.sizes());
  // _RandomApplyTransform: skipped when torch.rand(1) >= p.
  if (torch::rand({1}, generator).item<float>() >= static_cast<float>(o.p())) return image;
  const int64_t channels = image.size(-3), img_h = image.size(-2), img_w = image.size(-1);
  TORCH_CHECK_VALUE(o.value().size() == 1 || static_cast<int64_t>(o.value().size()) == channels,
                    "RandomErasing: value should have either a single value or ", channels,
                    " (number of input channels), got ", o.value().size());
  const double area = static_cast<double>(img_h * img_w);
  const auto log_ratio = torch::tensor(std::vector<double>{o.ratio()[0], o.ratio()[1]}, torch::kFloat32).log();
  const double log_lo = log_ratio[0].item<double>(), log_hi = log_ratio[1].item<double>();
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double erase_area =
        area * torch::empty({1}, torch::kFloat32).uniform_(o.scale()[0], o.scale()[1], generator).item<double>();
    const double aspect = torch::empty({1}, torch::kFloat32).uniform_(log_lo, log_hi, generator).exp_().item<double>();
    const int64_t h = aa_py_round(std::sqrt(erase_area * aspect));
    const int64_t w = aa_py_round(std::sqrt(erase_area / aspect));
    if (!(h < img_h && w < img_w)) continue;
    const auto v = torch::tensor(o.value(), torch::TensorOptions().dtype(torch::kFloat64))
                       .to(torch::kFloat32)
                       .view({-1, 1, 1});
    const int64_t i = torch::randint(0, img_h - h + 1, {1}, generator).item<int64_t>();
    const int64_t j = torch::randint(0, img_w - w + 1, {1}, generator).item<int64_t>();
    auto out = image.clone();
    out.slice(-2, i, i + h).slice(-1, j, j + w).copy_(v.to(out.device()));
    return out;
  }
  return image;
}

std::string RandomErasing::repr() const {
  const auto& o = options_;
  std::ostringstream out;
  out << "RandomErasing(p=" << o.p() << ", scale=(" << o.scale()[0] << ", " << o.scale()[1] << "), ratio=("
      << o.ratio()[0] << ", " << o.ratio()[1] << "), value=(";
  for (size_t i = 0; i < o.value().size(); ++i) out << (i ? ", " : "") << o.value()[i];
  out << "))";
  return out.str();
}

}  // namespace torchtl::data
