#include "data/image.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>

#include "data/bmp.h"
#include "data/map_file.h"

// Set by CMakeLists.txt from the configuring Python's torchcodec; empty in the setup.py build,
// where torchtl.data passes the path of the installed torchcodec's library.
#ifndef TORCHTL_DEFAULT_TORCHCODEC_LIBRARY
#define TORCHTL_DEFAULT_TORCHCODEC_LIBRARY ""
#endif

namespace torchtl::data {
namespace {

namespace fs = std::filesystem;

// Why load TorchCodec's library at run time rather than link it: it has no soname, headers or
// CMake target for its ops, and it registers them with the dispatcher when loaded, exactly as
// `import torchcodec` does in Python; loading the very file Python uses gives C++ programs the
// same pixels as Python. RTLD_LOCAL, as torchcodec loads it itself: its bundled libjpeg/libpng
// stay out of the global namespace. It links libtorch (already loaded here), not libpython.

enum class Format { JPEG, PNG, WebP, GIF, BMP, Unknown };

bool starts_with(const torch::Tensor& data, const char* magic, size_t offset = 0) {
  const auto n = std::strlen(magic);
  return static_cast<size_t>(data.numel()) >= offset + n &&
         std::memcmp(data.data_ptr<uint8_t>() + offset, magic, n) == 0;
}

Format sniff(const torch::Tensor& data) {
  if (starts_with(data, "\xFF\xD8\xFF")) return Format::JPEG;
  if (starts_with(data, "\x89PNG\r\n\x1A\n")) return Format::PNG;
  if (starts_with(data, "RIFF") && starts_with(data, "WEBP", 8)) return Format::WebP;
  if (starts_with(data, "GIF87a") || starts_with(data, "GIF89a")) return Format::GIF;
  if (starts_with(data, "BM")) return Format::BMP;
  return Format::Unknown;
}

[[noreturn]] void unsupported(const torch::Tensor& data) {
  TORCH_CHECK_VALUE(data.numel() > 0, "the file is empty");
  TORCH_CHECK_VALUE(false, "unsupported image format (not JPEG, PNG, WebP, GIF or BMP by its first bytes)");
}

bool registered(const char* op) { return c10::Dispatcher::singleton().findSchema({op, ""}).has_value(); }

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Decode = at::Tensor(const at::Tensor&, int64_t);
using DecodeJpegs = std::vector<at::Tensor>(at::TensorList, int64_t, c10::Device);

// The op handles of the chosen backend; built once, never freed (worker threads may still decode
// during interpreter shutdown).
struct Decoders {
  ImageBackend backend;
  std::string fallback_reason;
  // TorchCodec: one op per format. torchvision: decode_image sniffs the format itself.
  std::optional<c10::TypedOperatorHandle<Decode>> jpeg, webp, gif;
  std::optional<c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, int64_t, int64_t)>> png;
  std::optional<c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, int64_t, bool)>> image;
  std::optional<c10::TypedOperatorHandle<DecodeJpegs>> jpegs_cuda;
};

std::atomic<const Decoders*> chosen{nullptr};

const Decoders* torchcodec_decoders() {
  auto* d = new Decoders{ImageBackend::TorchCodec};
  d->jpeg = typed_op<Decode>("torchcodec_ns::decode_jpeg");
  d->png = typed_op<at::Tensor(const at::Tensor&, int64_t, int64_t)>("torchcodec_ns::decode_png");
  d->webp = typed_op<Decode>("torchcodec_ns::decode_webp");
  d->gif = typed_op<Decode>("torchcodec_ns::decode_gif");
  d->jpegs_cuda = typed_op<DecodeJpegs>("torchcodec_ns::decode_jpegs_cuda");
  return d;
}

// The fallback for stacks TorchCodec does not load on (torch 2.11): torchvision's deprecated ops.
const Decoders* torchvision_decoders(std::string reason) {
  auto* d = new Decoders{ImageBackend::TorchVision, std::move(reason)};
  d->image = typed_op<at::Tensor(const at::Tensor&, int64_t, bool)>("image::decode_image");
  d->jpegs_cuda = typed_op<DecodeJpegs>("image::decode_jpegs_cuda");
  return d;
}

// "" when TorchCodec's ops are registered (loading its library if needed), else why not.
std::string load_torchcodec(const std::string& library) {
  if (registered("torchcodec_ns::decode_jpeg")) return "";
  std::string path = library;
  std::string from = "the path given";
  if (path.empty()) {
    path = env("TORCHTL_TORCHCODEC_LIBRARY");
    from = "$TORCHTL_TORCHCODEC_LIBRARY";
  }
  if (path.empty()) {
    path = TORCHTL_DEFAULT_TORCHCODEC_LIBRARY;
    from = "CMake's TORCHTL_TORCHCODEC_LIBRARY";
  }
  if (path.empty()) {
    return "TorchCodec's image ops (torchcodec_ns::decode_jpeg, ...) are not registered and no "
           "libtorchcodec_image.so is known: in Python, install torchcodec; in C++, set TORCHTL_TORCHCODEC_LIBRARY "
           "to site-packages/torchcodec/libtorchcodec_image.so, or configure torchtl with CMake where a Python with "
           "torchcodec is found (-DTORCHTL_TORCHCODEC_PYTHON=/path/to/python, or "
           "-DTORCHTL_TORCHCODEC_LIBRARY=/path/to/libtorchcodec_image.so)";
  }
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return "TorchCodec's image library '" + path + "' (from " + from +
           ") does not exist; set TORCHTL_TORCHCODEC_LIBRARY to its path";
  }
  if (!dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) {
    const char* why = dlerror();
    return "cannot load TorchCodec's image library '" + path + "' (from " + from + "): " +
           (why ? why : "unknown dlopen error");
  }
  if (!registered("torchcodec_ns::decode_jpeg")) {
    return "'" + path + "' (from " + from +
           ") loaded, but registers no torchcodec_ns::decode_jpeg op: is it TorchCodec's libtorchcodec_image.so?";
  }
  return "";
}

const Decoders& decoders() {
  if (const auto* d = chosen.load()) return *d;
  load_image_ops();
  const auto& d = *chosen.load();
  if (d.backend == ImageBackend::TorchVision) {
    TORCH_WARN_ONCE("decoding images with torchvision's deprecated image ops: ", d.fallback_reason);
  }
  return d;
}

torch::Tensor first_frame(const torch::Tensor& image) { return image.dim() == 4 ? image[0] : image; }

torch::Tensor decode(const torch::Tensor& data, ReadMode mode) {
  const auto format = sniff(data);
  if (format == Format::BMP) return bmp_to_rgb(data);
  const auto& d = decoders();
  const auto m = static_cast<int64_t>(mode);
  if (d.backend == ImageBackend::TorchVision) {
    // torchvision's own "Unsupported image file" would not say which formats are.
    if (format == Format::Unknown) unsupported(data);
    return first_frame(d.image->call(data, m, /*apply_exif_orientation=*/true));
  }
  switch (format) {
    case Format::JPEG:
      return d.jpeg->call(data, m);
    case Format::PNG:
      // output_dtype "auto": 16-bit PNGs stay 16 bit, so scaling to 8 bit is decode_rgb's, as before.
      return d.png->call(data, m, /*output_dtype=auto*/ 2);
    case Format::WebP:
      return first_frame(d.webp->call(data, m));
    case Format::GIF:
      return first_frame(d.gif->call(data, m));
    default:
      unsupported(data);
  }
}

uint32_t crc32(const uint8_t* bytes, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ bytes[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void append_be32(std::vector<uint8_t>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

// A palette PNG's stored indices. TorchCodec (like PIL) only returns palette PNGs as colours, so
// the palette is replaced by the gray ramp (i, i, i) with all 2^depth entries: decoded as RGB, the
// red channel then is the index itself, whatever colours (or repeats) the real palette holds.
// nullopt when `data` is not a palette PNG. tRNS and hIST describe the old palette and go.
std::optional<torch::Tensor> palette_indices(const torch::Tensor& data) {
  const auto* p = data.data_ptr<uint8_t>();
  const size_t n = static_cast<size_t>(data.numel());
  // Signature (8), IHDR length + type (8), width, height (8), bit depth, colour type.
  if (n < 8 + 8 + 13 || std::memcmp(p + 12, "IHDR", 4) != 0 || p[8 + 8 + 9] != 3) return std::nullopt;
  const int depth = p[8 + 8 + 8];
  TORCH_CHECK_VALUE(depth == 1 || depth == 2 || depth == 4 || depth == 8, "palette PNG with bit depth ", depth);
  std::vector<uint8_t> out(p, p + 8);
  size_t at = 8;
  while (at + 12 <= n) {
    const uint32_t length = read_be32(p + at);
    TORCH_CHECK_VALUE(at + 12 + length <= n, "truncated PNG chunk at byte ", at);
    const char* type = reinterpret_cast<const char*>(p + at + 4);
    if (std::memcmp(type, "PLTE", 4) == 0) {
      const size_t entries = size_t{1} << depth;
      std::vector<uint8_t> chunk{'P', 'L', 'T', 'E'};
      for (size_t i = 0; i < entries; ++i) chunk.insert(chunk.end(), 3, static_cast<uint8_t>(i));
      append_be32(out, static_cast<uint32_t>(entries * 3));
      out.insert(out.end(), chunk.begin(), chunk.end());
      append_be32(out, crc32(chunk.data(), chunk.size()));
    } else if (std::memcmp(type, "tRNS", 4) != 0 && std::memcmp(type, "hIST", 4) != 0) {
      out.insert(out.end(), p + at, p + at + 12 + length);
    }
    at += 12 + length;
  }
  auto bytes = torch::from_blob(out.data(), {static_cast<int64_t>(out.size())}, torch::kUInt8);
  return decode(bytes, ReadMode::RGB).narrow(0, 0, 1);
}

}  // namespace

ImageBackend load_image_ops(const std::string& library) {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (const auto* d = chosen.load()) return d->backend;

  const auto forced = env("TORCHTL_IMAGE_BACKEND");
  TORCH_CHECK_VALUE(forced.empty() || forced == "torchcodec" || forced == "torchvision",
                    "TORCHTL_IMAGE_BACKEND must be 'torchcodec' or 'torchvision', got '", forced, "'");
  std::string reason = "TORCHTL_IMAGE_BACKEND=torchvision";
  if (forced != "torchvision") {
    reason = load_torchcodec(library);
    if (reason.empty()) {
      chosen.store(torchcodec_decoders());
      return ImageBackend::TorchCodec;
    }
    TORCH_CHECK(forced.empty(), reason, " (TORCHTL_IMAGE_BACKEND=torchcodec)");
  }
  TORCH_CHECK(registered("image::decode_image"), reason,
              forced.empty() ? "; torchvision's image ops, the fallback, are not registered either (in Python, "
                               "import torchvision)"
                             : "; but torchvision's image ops are not registered (in Python, import torchvision)");
  chosen.store(torchvision_decoders(std::move(reason)));
  return ImageBackend::TorchVision;
}

std::string image_backend_fallback_reason() {
  load_image_ops();
  return chosen.load()->fallback_reason;
}

bool image_ops_available() {
  try {
    load_image_ops();
    return true;
  } catch (const c10::Error&) {
    return false;
  }
}

torch::Tensor read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) throw FileNotFoundError("'" + path + "' does not exist");
    TORCH_CHECK(false, "cannot open '", path, "'");
  }
  const auto size = static_cast<int64_t>(in.tellg());
  auto bytes = torch::empty({size}, torch::kUInt8);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(bytes.data_ptr<uint8_t>()), size);
  TORCH_CHECK(in.good() || (size == 0 && in.eof()), "error while reading '", path, "'");
  return bytes;
}

bool is_jpeg(const torch::Tensor& data) { return sniff(data) == Format::JPEG; }

torch::Tensor read_image(const std::string& path) {
  auto bytes = read_file(path);
  try {
    return decode_rgb(bytes);
  } catch (const c10::ValueError& e) {
    TORCH_CHECK_VALUE(false, "image '", path, "': ", e.what_without_backtrace());
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "image '", path, "': ", e.what_without_backtrace());
  }
}

void write_png(const torch::Tensor& image, const std::string& path) {
  TORCH_CHECK_VALUE(image.dim() == 3 && (image.size(0) == 1 || image.size(0) == 3) && image.scalar_type() == torch::kUInt8,
                    "write_png('", path, "') takes a uint8 1 x H x W or 3 x H x W image, got ", image.scalar_type(), " ",
                    image.sizes());
  load_image_ops();
  TORCH_CHECK(registered("torchcodec_ns::encode_png_to_file"), "write_png('", path,
              "') needs TorchCodec's image library, which is not loaded: ", image_backend_fallback_reason());
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("torchcodec_ns::encode_png_to_file", "");
  std::vector<c10::IValue> stack{image.cpu().contiguous(), path, static_cast<int64_t>(6)};
  op.callBoxed(&stack);
}

torch::Tensor decode_rgb(const torch::Tensor& data) {
  auto image = decode(data, ReadMode::RGB);
  if (image.scalar_type() == torch::kUInt16) {
    // v2.ToDtype(torch.uint8, scale=True) on uint16: divide by 2**8, truncate.
    image = image.to(torch::kInt32).bitwise_right_shift(8).to(torch::kUInt8);
  }
  TORCH_CHECK(image.scalar_type() == torch::kUInt8 && image.dim() == 3 && image.size(0) == 3,
              "decoded image has unexpected shape ", image.sizes(), " and dtype ", image.scalar_type());
  return image;
}

std::vector<torch::Tensor> decode_jpegs_rgb(const std::vector<torch::Tensor>& data, const torch::Device& device) {
  TORCH_CHECK_VALUE(device.is_cuda(), "batched JPEG decoding runs on CUDA devices, not ", device);
  for (const auto& bytes : data) TORCH_CHECK_VALUE(is_jpeg(bytes), "not a JPEG file");
  return decoders().jpegs_cuda->call(data, static_cast<int64_t>(ReadMode::RGB), device);
}

int jpeg_exif_orientation(const torch::Tensor& data) {
  const auto* p = data.data_ptr<uint8_t>();
  const size_t n = static_cast<size_t>(data.numel());
  for (size_t at = 2; at + 4 <= n && p[at] == 0xFF;) {
    const int marker = p[at + 1];
    const size_t length = (size_t{p[at + 2]} << 8) | p[at + 3];
    if (marker == 0xDA || length < 2) break;  // start of scan: the metadata is over
    const auto* s = p + at + 4;
    const size_t size = std::min(length - 2, n - (at + 4));
    if (marker == 0xE1 && size >= 14 && std::memcmp(s, "Exif\0\0", 6) == 0) {
      const auto* tiff = s + 6;
      const size_t tiff_size = size - 6;
      const bool little = tiff[0] == 'I';
      auto u16 = [&](size_t o) -> size_t {
        return o + 2 > tiff_size ? 0 : little ? tiff[o] | (tiff[o + 1] << 8) : (tiff[o] << 8) | tiff[o + 1];
      };
      auto u32 = [&](size_t o) -> size_t { return little ? u16(o) | (u16(o + 2) << 16) : (u16(o) << 16) | u16(o + 2); };
      const size_t ifd = u32(4);
      const size_t entries = u16(ifd);
      for (size_t e = 0; e < entries; ++e) {
        const size_t entry = ifd + 2 + 12 * e;
        if (entry + 12 > tiff_size) break;
        if (u16(entry) == 0x0112) return static_cast<int>(u16(entry + 8));
      }
      return 1;
    }
    at += 2 + length;
  }
  return 1;
}

std::vector<torch::Tensor> decode_rgb_on(const std::vector<torch::Tensor>& data, const torch::Device& device) {
  std::vector<torch::Tensor> images(data.size());
  std::vector<torch::Tensor> jpegs;
  std::vector<size_t> jpeg_slots;
  for (size_t i = 0; i < data.size(); ++i) {
    if (device.is_cuda() && is_jpeg(data[i]) && jpeg_exif_orientation(data[i]) <= 1) {
      jpegs.push_back(data[i]);
      jpeg_slots.push_back(i);
    } else {
      images[i] = decode_rgb(data[i]).to(device);
    }
  }
  if (!jpegs.empty()) {
    auto decoded = decode_jpegs_rgb(jpegs, device);
    for (size_t j = 0; j < decoded.size(); ++j) images[jpeg_slots[j]] = std::move(decoded[j]);
  }
  return images;
}

torch::Tensor decode_mask(const torch::Tensor& data) {
  const auto indices = sniff(data) == Format::PNG && decoders().backend == ImageBackend::TorchCodec
                           ? palette_indices(data)
                           : std::nullopt;
  auto mask = indices ? *indices : decode(data, ReadMode::Unchanged);
  TORCH_CHECK_VALUE(mask.dim() == 3 && mask.size(0) == 1, "a mask must decode to one channel (a palette or gray PNG) ",
                    "but this one has ", mask.size(0), " channels; colour masks are not converted to class indices");
  if (mask.scalar_type() == torch::kUInt16) return mask[0].to(torch::kInt32);
  return mask[0];
}

}  // namespace torchtl::data
