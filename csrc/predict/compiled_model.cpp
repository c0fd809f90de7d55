#include "predict/compiled_model.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <filesystem>
#include <sstream>
#include <unordered_map>

#include "io/model_file.h"

namespace torchtl::predict {

namespace {

std::string required(const std::unordered_map<std::string, std::string>& metadata, const std::string& key,
                     const std::string& path) {
  const auto it = metadata.find(key);
  TORCH_CHECK(it != metadata.end(), "'", path, "' is an AOTInductor package without torchtl's metadata (", key,
              " is missing): write it with torchtl.export or `torchtl export`");
  return it->second;
}

std::vector<int64_t> parse_size(const std::string& text, const std::string& path) {
  std::vector<int64_t> size;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    try {
      size.push_back(std::stoll(part));
    } catch (const std::exception&) {
      size.clear();
      break;
    }
  }
  TORCH_CHECK(size.size() == 2 && size[0] > 0 && size[1] > 0, "'", path,
              "': torchtl.input_size must be 'height,width', got '", text, "'");
  return size;
}

}  // namespace

bool is_compiled_package(const std::string& path) {
  return path.size() > 4 && path.compare(path.size() - 4, 4, ".pt2") == 0;
}

CompiledModel::CompiledModel(const std::string& package_path, std::optional<torch::Device> device)
    : path_(package_path), device_(torch::kCPU) {
  TORCH_CHECK(std::filesystem::is_regular_file(package_path), "package not found: '", package_path, "'");
  std::unordered_map<std::string, std::string> metadata;
  try {
    metadata = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(package_path, "model");
  } catch (const c10::Error& e) {
    // LibTorch's message lists the archive's files but not its path; keep its first line.
    const std::string reason = e.what_without_backtrace();
    TORCH_CHECK(false, "'", package_path, "' is no AOTInductor package: ", reason.substr(0, reason.find('\n')));
  }
  const auto compiled_for = required(metadata, "AOTI_DEVICE_KEY", package_path);
  task_ = required(metadata, "torchtl.task", package_path);
  input_size_ = parse_size(required(metadata, "torchtl.input_size", package_path), package_path);
  dynamic_batch_ = required(metadata, "torchtl.dynamic_batch", package_path) == "1";
  precision_ = required(metadata, "torchtl.precision", package_path);
  c10::DeviceIndex index = -1;
  if (compiled_for == "cuda") {
    TORCH_CHECK(!device || device->is_cuda(), "'", package_path, "' was compiled for CUDA and runs there, not on ",
                device->str(), "; export it again with device='cpu' to run it on the CPU");
    index = device && device->has_index() ? device->index() : -1;
    device_ = torch::Device(torch::kCUDA, index < 0 ? 0 : index);
  } else {
    TORCH_CHECK(compiled_for == "cpu", "'", package_path, "' was compiled for '", compiled_for,
                "'; torchtl runs CPU and CUDA packages");
    TORCH_CHECK(!device || device->is_cpu(), "'", package_path, "' was compiled for the CPU and runs there, not on ",
                device->str(), "; export it again with device='cuda' to run it on a GPU");
  }
  // torchtl.export puts the model file's record under the name a model file gives it.
  auto record = io::read_model_record(package_path);
  TORCH_CHECK(record.has_value(), "'", package_path, "' holds no ", io::kModelRecord,
              ": write it with torchtl.export or `torchtl export`");
  model_record_ = std::move(*record);
  loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package_path, "model", false, 1, index);
}

CompiledModel::~CompiledModel() = default;
CompiledModel::CompiledModel(CompiledModel&&) noexcept = default;
CompiledModel& CompiledModel::operator=(CompiledModel&&) noexcept = default;

torch::Tensor CompiledModel::forward(const torch::Tensor& batch) {
  TORCH_CHECK(batch.dim() == 4 && batch.size(1) == 3, "'", path_, "' takes a N x 3 x H x W batch, got shape ",
              batch.sizes());
  TORCH_CHECK(dynamic_batch_ || batch.size(0) == 2, "'", path_,
              "' was exported with dynamic_batch=False and takes batches of 2, got ", batch.size(0));
  const int64_t height = batch.size(2), width = batch.size(3);
  const bool resized = height != input_size_[0] || width != input_size_[1];
  TORCH_CHECK(!resized || task_ == "segmentation", "'", path_, "' takes ", input_size_[0], " x ", input_size_[1],
              " images (the size it was exported for), got ", height, " x ", width,
              "; crop to that size, or export again with example_size=(", height, ", ", width, ")");
  auto input = batch.to(device_, torch::kFloat32).contiguous();
  if (resized) {
    input = at::upsample_bilinear2d(input, input_size_, /*align_corners=*/false);
  }
  auto outputs = loader_->run({input});
  TORCH_CHECK(outputs.size() == 1, "'", path_, "' returned ", outputs.size(), " outputs, expected 1");
  auto out = outputs[0];
  if (resized) {
    out = at::upsample_bilinear2d(out, {height, width}, /*align_corners=*/false);
  }
  return out;
}

}  // namespace torchtl::predict
