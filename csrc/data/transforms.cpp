#include "data/transforms.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Version.h>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace torchtl::data {
namespace {

// v2's _do_native_uint8_resize_on_cpu: ATen's uint8 bilinear kernel is used where it is
// vectorised; elsewhere v2 goes through float32 and rounds. Ours takes the same branch so the
// pixels match on every CPU.
bool native_uint8_bilinear() {
#if defined(__aarch64__) || defined(__arm64__)
  return true;
#else
  static const bool native = [] {
    auto capability = at::get_cpu_capability();
    return capability == "AVX2" || capability == "AVX512";
  }();
  return native;
#endif
}

// Python's round(): half to even (the default floating-point rounding mode).
int64_t py_round(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

void check_image(const torch::Tensor& image, const char* what) {
  TORCH_CHECK_VALUE(image.dim() == 3, what, " expects a C x H x W image, got shape ", image.sizes());
}

std::string list(const std::vector<double>& values) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  out << ")";
  return out.str();
}

// v2's _RandomApplyTransform skips when torch.rand(1) >= p, a float32 comparison.
bool flip_draw(at::Generator& generator, double p) {
  return torch::rand({1}, generator).item<float>() < static_cast<float>(p);
}

}  // namespace

const std::vector<double>& imagenet_mean() {
  static const std::vector<double> mean{0.485, 0.456, 0.406};
  return mean;
}

const std::vector<double>& imagenet_std() {
  static const std::vector<double> std{0.229, 0.224, 0.225};
  return std;
}

std::array<int64_t, 2> resized_size(int64_t height, int64_t width, int64_t size) {
  const bool portrait = width <= height;
  const int64_t short_side = portrait ? width : height, long_side = portrait ? height : width;
  const int64_t new_long = static_cast<int64_t>(static_cast<double>(size * long_side) / static_cast<double>(short_side));
  return portrait ? std::array<int64_t, 2>{new_long, size} : std::array<int64_t, 2>{size, new_long};
}

torch::Tensor resize(const torch::Tensor& image, int64_t height, int64_t width, Interpolation mode) {
  check_image(image, "resize");
  TORCH_CHECK_VALUE(height > 0 && width > 0, "resize to ", height, " x ", width, ": sizes must be positive");
  const auto shape = image.sizes().vec();
  const int64_t channels = shape[0], old_h = shape[1], old_w = shape[2];
  if (old_h == height && old_w == width) return image;
  if (image.numel() == 0) return image.new_empty({channels, height, width});

  const auto dtype = image.scalar_type();
  bool acceptable = dtype == torch::kFloat32 || dtype == torch::kFloat64;
  if (mode == Interpolation::Nearest) acceptable = acceptable || dtype == torch::kUInt8;
  // As v2: antialiased bilinear takes uint8 natively only on CPUs with the kernel; elsewhere (CUDA
  // included) it runs in float32 and rounds back.
  else if (native_uint8_bilinear() && image.is_cpu()) acceptable = acceptable || dtype == torch::kUInt8;

  auto x = image.reshape({-1, channels, old_h, old_w});
  // v2's restride of a single channels-last image, which makes interpolate allocate a
  // channels-last output instead of repacking (torch issue 68430).
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.size(0) == 1 && x.numel() != x.stride(0)) {
    auto strides = x.strides().vec();
    strides[0] = x.numel();
    x = x.as_strided(x.sizes(), strides);
  }
  if (!acceptable) x = x.to(torch::kFloat32);
  if (mode == Interpolation::Bilinear) {
    x = at::_upsample_bilinear2d_aa(x, {height, width}, /*align_corners=*/false, std::nullopt, std::nullopt);
  } else {
    x = at::upsample_nearest2d(x, {height, width}, std::nullopt, std::nullopt);
  }
  if (!acceptable) {
    if (!at::isFloatingType(dtype)) x = x.round_();
    x = x.to(dtype);
  }
  return x.reshape({channels, height, width});
}

torch::Tensor center_crop(const torch::Tensor& image, int64_t crop_h, int64_t crop_w) {
  check_image(image, "center_crop");
  auto x = image;
  int64_t h = x.size(1), w = x.size(2);
  if (crop_h > h || crop_w > w) {
    const int64_t left = crop_w > w ? (crop_w - w) / 2 : 0, top = crop_h > h ? (crop_h - h) / 2 : 0;
    const int64_t right = crop_w > w ? (crop_w - w + 1) / 2 : 0, bottom = crop_h > h ? (crop_h - h + 1) / 2 : 0;
    x = at::constant_pad_nd(x, {left, right, top, bottom}, 0);
    h = x.size(1);
    w = x.size(2);
    if (crop_h == h && crop_w == w) return x;
  }
  const int64_t top = py_round((h - crop_h) / 2.0), left = py_round((w - crop_w) / 2.0);
  return x.slice(1, top, top + crop_h).slice(2, left, left + crop_w);
}

torch::Tensor to_float_normalized(const torch::Tensor& image, const std::vector<double>& mean,
                                  const std::vector<double>& std) {
  check_image(image, "normalize");
  TORCH_CHECK_VALUE(image.scalar_type() == torch::kUInt8, "normalize expects a uint8 image, got ", image.scalar_type());
  const auto channels = static_cast<size_t>(image.size(0));
  TORCH_CHECK_VALUE(mean.size() == channels && std.size() == channels, "normalize: ", channels,
                    "-channel image but mean has ", mean.size(), " and std ", std.size(), " values");
  TORCH_CHECK_VALUE(std::all_of(std.begin(), std.end(), [](double s) { return s != 0.0; }),
                    "normalize: std has a zero, which would divide by zero");
  auto x = image.to(torch::kFloat32).mul_(1.0 / 255.0);
  auto m = torch::tensor(mean, torch::kFloat32).view({-1, 1, 1}).to(x.device());
  auto s = torch::tensor(std, torch::kFloat32).view({-1, 1, 1}).to(x.device());
  return x.sub(m).div_(s);
}

CropBox random_resized_crop_params(int64_t height, int64_t width, const std::array<double, 2>& scale,
                                   const std::array<double, 2>& ratio, at::Generator& generator) {
  const double area = static_cast<double>(height * width);
  // v2 keeps log(ratio) as a float32 tensor; the bounds are those float32 values.
  const auto log_ratio = torch::tensor(std::vector<double>{ratio[0], ratio[1]}, torch::kFloat32).log();
  const double log_lo = log_ratio[0].item<double>(), log_hi = log_ratio[1].item<double>();
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area =
        area * torch::empty({1}, torch::kFloat32).uniform_(scale[0], scale[1], generator).item<double>();
    const double aspect = torch::empty({1}, torch::kFloat32).uniform_(log_lo, log_hi, generator).exp_().item<double>();
    const int64_t w = py_round(std::sqrt(target_area * aspect));
    const int64_t h = py_round(std::sqrt(target_area / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int64_t top = torch::randint(0, height - h + 1, {1}, generator).item<int64_t>();
      const int64_t left = torch::randint(0, width - w + 1, {1}, generator).item<int64_t>();
      return {top, left, h, w};
    }
  }
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  const double min_ratio = std::min(ratio[0], ratio[1]), max_ratio = std::max(ratio[0], ratio[1]);
  int64_t w = width, h = height;
  if (in_ratio < min_ratio) {
    h = py_round(w / min_ratio);
  } else if (in_ratio > max_ratio) {
    w = py_round(h * max_ratio);
  }
  return {(height - h) / 2, (width - w) / 2, h, w};
}

uint64_t mix_seed(uint64_t seed, uint64_t epoch, uint64_t index) {
  // splitmix64 over the three words: neighbouring indices get unrelated streams.
  auto splitmix = [](uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
  };
  return splitmix(splitmix(splitmix(seed) ^ epoch) ^ index);
}

at::Generator sample_generator(uint64_t seed, uint64_t epoch, uint64_t index) {
  return at::make_generator<at::CPUGeneratorImpl>(mix_seed(seed, epoch, index));
}

ClassificationTransform::ClassificationTransform(ClassificationTransformOptions options) : options_(std::move(options)) {
  TORCH_CHECK_VALUE(options_.size() > 0, "classification_transform: size must be positive, got ", options_.size());
  TORCH_CHECK_VALUE(options_.resize_size() > 0, "classification_transform: resize_size must be positive, got ",
                    options_.resize_size());
  TORCH_CHECK_VALUE(options_.scale()[0] <= options_.scale()[1] && options_.ratio()[0] <= options_.ratio()[1],
                    "classification_transform: scale and ratio must be (min, max)");
  TORCH_CHECK_VALUE(options_.hflip_prob() >= 0.0 && options_.hflip_prob() <= 1.0,
                    "classification_transform: hflip_prob must be in [0, 1], got ", options_.hflip_prob());
  TORCH_CHECK_VALUE(options_.mean().size() == 3 && options_.std().size() == 3,
                    "classification_transform: mean and std need 3 values (RGB)");
}

torch::Tensor ClassificationTransform::operator()(const torch::Tensor& image, at::Generator& generator) const {
  check_image(image, "classification_transform");
  const auto& o = options_;
  torch::Tensor x;
  if (o.train()) {
    auto box = random_resized_crop_params(image.size(1), image.size(2), o.scale(), o.ratio(), generator);
    x = image.slice(1, box.top, box.top + box.height).slice(2, box.left, box.left + box.width);
    x = resize(x, o.size(), o.size());
    if (flip_draw(generator, o.hflip_prob())) x = x.flip(-1);
  } else {
    auto size = resized_size(image.size(1), image.size(2), o.resize_size());
    x = center_crop(resize(image, size[0], size[1]), o.size(), o.size());
  }
  return to_float_normalized(x, o.mean(), o.std());
}

std::string ClassificationTransform::repr() const {
  const auto& o = options_;
  std::ostringstream out;
  if (o.train()) {
    out << "classification_transform(train=True: RandomResizedCrop(" << o.size() << ", scale=(" << o.scale()[0] << ", "
        << o.scale()[1] << "), ratio=(" << o.ratio()[0] << ", " << o.ratio()[1]
        << "), antialias=True), RandomHorizontalFlip(p=" << o.hflip_prob() << ")";
  } else {
    out << "classification_transform(train=False: Resize(" << o.resize_size() << ", antialias=True), CenterCrop("
        << o.size() << ")";
  }
  out << ", ToDtype(float32, scale=True), Normalize(mean=" << list(o.mean()) << ", std=" << list(o.std()) << "))";
  return out.str();
}

SegmentationTransform::SegmentationTransform(SegmentationTransformOptions options) : options_(std::move(options)) {
  TORCH_CHECK_VALUE(options_.base_size() > 0, "segmentation_transform: base_size must be positive, got ",
                    options_.base_size());
  TORCH_CHECK_VALUE(!options_.train() || options_.crop_size() > 0,
                    "segmentation_transform: crop_size must be positive, got ", options_.crop_size());
  TORCH_CHECK_VALUE(!options_.train() || options_.base_size() / 2 < options_.base_size() * 2,
                    "segmentation_transform: base_size too small for RandomResize(0.5x, 2x)");
  TORCH_CHECK_VALUE(options_.hflip_prob() >= 0.0 && options_.hflip_prob() <= 1.0,
                    "segmentation_transform: hflip_prob must be in [0, 1], got ", options_.hflip_prob());
  TORCH_CHECK_VALUE(options_.mean().size() == 3 && options_.std().size() == 3,
                    "segmentation_transform: mean and std need 3 values (RGB)");
}

std::pair<torch::Tensor, torch::Tensor> SegmentationTransform::operator()(const torch::Tensor& image,
                                                                          const torch::Tensor& mask,
                                                                          at::Generator& generator) const {
  check_image(image, "segmentation_transform");
  TORCH_CHECK_VALUE(mask.dim() == 2, "segmentation_transform expects an H x W mask, got shape ", mask.sizes());
  TORCH_CHECK_VALUE(mask.size(0) == image.size(1) && mask.size(1) == image.size(2), "mask size ", mask.size(0), " x ",
                    mask.size(1), " differs from image size ", image.size(1), " x ", image.size(2));
  const auto& o = options_;
  auto x = image;
  auto m = mask.unsqueeze(0);
  if (o.train()) {
    // v2.RandomResize(min_size, max_size): torch.randint(min, max, ()) (max exclusive).
    const int64_t size = torch::randint(o.base_size() / 2, o.base_size() * 2, {}, generator).item<int64_t>();
    auto hw = resized_size(x.size(1), x.size(2), size);
    x = resize(x, hw[0], hw[1]);
    m = resize(m, hw[0], hw[1], Interpolation::Nearest);
    if (flip_draw(generator, o.hflip_prob())) {
      x = x.flip(-1);
      m = m.flip(-1);
    }
    // The references' PadIfSmaller: pad right and bottom only, image with 0 and mask with the
    // ignore index, so padding never counts as a class.
    const int64_t pad_w = std::max<int64_t>(o.crop_size() - x.size(2), 0);
    const int64_t pad_h = std::max<int64_t>(o.crop_size() - x.size(1), 0);
    if (pad_w > 0 || pad_h > 0) {
      x = at::constant_pad_nd(x, {0, pad_w, 0, pad_h}, 0);
      m = at::constant_pad_nd(m, {0, pad_w, 0, pad_h}, static_cast<double>(o.ignore_index()));
    }
    // v2.RandomCrop.make_params: a draw per axis only where the image is larger than the crop.
    const int64_t h = x.size(1), w = x.size(2), c = o.crop_size();
    const int64_t top = h > c ? torch::randint(0, h - c + 1, {}, generator).item<int64_t>() : 0;
    const int64_t left = w > c ? torch::randint(0, w - c + 1, {}, generator).item<int64_t>() : 0;
    x = x.slice(1, top, top + c).slice(2, left, left + c);
    m = m.slice(1, top, top + c).slice(2, left, left + c);
  } else {
    auto hw = resized_size(x.size(1), x.size(2), o.base_size());
    m = resize(m, hw[0], hw[1], Interpolation::Nearest);
    return {eval_image(image), m[0].to(torch::kInt64)};
  }
  return {to_float_normalized(x, o.mean(), o.std()), m[0].to(torch::kInt64)};
}

torch::Tensor SegmentationTransform::eval_image(const torch::Tensor& image) const {
  check_image(image, "segmentation_transform");
  const auto& o = options_;
  auto hw = resized_size(image.size(1), image.size(2), o.base_size());
  return to_float_normalized(resize(image, hw[0], hw[1]), o.mean(), o.std());
}

std::string SegmentationTransform::repr() const {
  const auto& o = options_;
  std::ostringstream out;
  if (o.train()) {
    out << "segmentation_transform(train=True: RandomResize(" << o.base_size() / 2 << ", " << o.base_size() * 2
        << "), RandomHorizontalFlip(p=" << o.hflip_prob() << "), PadIfSmaller(" << o.crop_size()
        << ", mask fill=" << o.ignore_index() << "), RandomCrop(" << o.crop_size() << ")";
  } else {
    out << "segmentation_transform(train=False: Resize(" << o.base_size() << ")";
  }
  out << ", ToDtype(float32, scale=True), Normalize(mean=" << list(o.mean()) << ", std=" << list(o.std())
      << "); masks nearest, int64)";
  return out.str();
}

}  // namespace torchtl::data
