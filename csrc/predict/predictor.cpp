#include "predict/predictor.h"

#include "predict/compiled_model.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <algorithm>
#include <regex>

#include "data/image.h"
#include "data/loader.h"
#include "data/transforms.h"

namespace torchtl {

ImageSource::ImageSource(torch::Tensor encoded, std::string name) : path_(std::move(name)), encoded_(std::move(encoded)) {
  TORCH_CHECK_VALUE(encoded_.defined() && encoded_.dim() == 1 && encoded_.scalar_type() == torch::kUInt8,
                    "ImageSource: encoded bytes must be a 1-D uint8 tensor, got ",
                    encoded_.defined() ? encoded_.toString() : std::string("an undefined tensor"));
  encoded_ = encoded_.cpu().contiguous();
}

ImageSource ImageSource::from_bytes(const std::string& bytes, std::string name) {
  auto data = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(data.data_ptr<uint8_t>()));
  return ImageSource(data, std::move(name));
}

std::string ImageSource::describe(size_t index) const {
  if (is_path()) return "image '" + path_ + "'";
  const std::string name = path_.empty() ? "image " + std::to_string(index) : "image '" + path_ + "'";
  return name + " (" + std::to_string(encoded_.numel()) + " encoded bytes)";
}

namespace {

// A decoder's message without the "function, source_file.cpp:line, " before it, which says nothing
// to the user about their image.
std::string decode_reason(const std::string& message) {
  static const std::regex location(R"(^\w+, \S+:\d+, )");
  return std::regex_replace(message, location, "");
}

}  // namespace

torch::Tensor ImageSource::decode(size_t index) const {
  const auto bytes = is_path() ? data::read_file(path_) : encoded_;  // a missing file: FileNotFoundError naming it
  TORCH_CHECK_VALUE(bytes.numel() > 0, describe(index), ": the file is empty (0 bytes)");
  try {
    return data::decode_rgb(bytes);
  } catch (const c10::Error& e) {
    // Whatever the decoder says (unsupported format, truncated data), the image is at fault.
    TORCH_CHECK_VALUE(false, describe(index), ": cannot decode it: ", decode_reason(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    // TorchCodec's and torchvision's decoders are built on torch's stable ABI, whose checks throw
    // std::runtime_error rather than c10::Error.
    TORCH_CHECK_VALUE(false, describe(index), ": cannot decode it: ", decode_reason(e.what()));
  }
  return {};
}

namespace {

torch::Device default_device() { return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU); }

// Loads image i of `images` as the model takes it: {transformed image, {H, W} of the original}.
template <typename Transform>
data::ThreadedLoader image_loader(const std::vector<ImageSource>& images, Transform transform, int64_t batch_size,
                                  int64_t num_workers) {
  // One image needs no thread; never more threads than images.
  const auto workers = std::min<int64_t>(num_workers, images.size() > 1 ? static_cast<int64_t>(images.size()) : 0);
  return data::ThreadedLoader(
      [&images, transform](size_t i, uint64_t) {
        const auto image = images[i].decode(i);
        auto size = torch::tensor({image.size(1), image.size(2)}, torch::kInt64);
        try {
          return std::vector<torch::Tensor>{transform(image), size};
        } catch (const c10::Error& e) {
          TORCH_CHECK_VALUE(false, images[i].describe(i), ": ", e.what_without_backtrace());
        }
        return std::vector<torch::Tensor>{};
      },
      [&images](size_t i) { return images[i].describe(i); }, images.size(),
      data::LoaderOptions().batch_size(batch_size).num_workers(workers));
}

}  // namespace

namespace {

// The runner for a model file or a package, and the metadata that feeds it.
std::pair<std::shared_ptr<predict::ModelRunner>, io::ModelMetadata> open_model(const std::string& path,
                                                                               std::optional<torch::Device> device) {
  if (predict::is_compiled_package(path)) {
    auto runner = std::make_shared<predict::CompiledModel>(path, device);
    return {runner, io::parse_model_metadata(runner->model_record(), path)};
  }
  auto runner = std::make_shared<predict::ModuleRunner>(load_model(path), device.value_or(default_device()));
  auto metadata = runner->model().metadata;
  return {std::move(runner), std::move(metadata)};
}

}  // namespace

Predictor::Predictor(const std::string& model_file, std::optional<torch::Device> device, PredictorOptions options)
    : Predictor(open_model(model_file, device), model_file, std::move(options)) {}

Predictor::Predictor(std::pair<std::shared_ptr<predict::ModelRunner>, io::ModelMetadata> opened,
                     const std::string& source, PredictorOptions options)
    : Predictor(std::move(opened.first), std::move(opened.second), source, std::move(options)) {}

Predictor::Predictor(std::shared_ptr<predict::ModelRunner> runner, io::ModelMetadata metadata, std::string source,
                     PredictorOptions options)
    : runner_(std::move(runner)), metadata_(std::move(metadata)), source_(std::move(source)), options_(std::move(options)) {
  TORCH_CHECK_VALUE(runner_ != nullptr, "Predictor: no model runner");
  TORCH_CHECK_VALUE(metadata_.transform.has_value(), "model file '", source_, "': field 'transform' is null: the ",
                    "file does not say how its images were transformed; write it again with ",
                    "torchtl.save_model(model, path, transform=...)");
  TORCH_CHECK_VALUE(options_.batch_size() > 0, "Predictor: batch_size must be positive, got ", options_.batch_size());
  TORCH_CHECK_VALUE(options_.num_workers() >= 0 && options_.num_workers() <= data::kMaxLoaderWorkers,
                    "Predictor: num_workers must be in [0, ", data::kMaxLoaderWorkers, "], got ", options_.num_workers());
}

void Predictor::check_task(const std::string& task, const char* call) const {
  TORCH_CHECK_VALUE(metadata_.task == task, "Predictor.", call, ": model file '", source_, "' holds a ",
                    metadata_.task, " model (field 'task'); use ",
                    metadata_.task == "classification" ? "classify" : "segment", " instead");
}

std::vector<std::vector<Prediction>> Predictor::classify(const std::vector<ImageSource>& images, int64_t topk) const {
  check_task("classification", "classify");
  TORCH_CHECK_VALUE(topk > 0, "Predictor.classify: topk must be positive, got ", topk);
  const auto transform = std::make_shared<const data::ClassificationTransform>(
      io::classification_transform_options(*metadata_.transform));
  auto loader = image_loader(images, [transform](const torch::Tensor& image) {
    at::Generator unused = at::detail::getDefaultCPUGenerator();  // the eval transform draws nothing
    return (*transform)(image, unused);
  }, options_.batch_size(), options_.num_workers());
  std::vector<std::vector<Prediction>> out(images.size());
  auto epoch = loader.epoch(0);
  while (auto batch = epoch->next()) {
    const auto logits = runner_->forward(batch->fields[0].to(runner_->device()));
    const auto probabilities = torch::softmax(logits, 1);
    const auto k = std::min<int64_t>(topk, probabilities.size(1));
    const auto [values, indices] = probabilities.topk(k, 1);
    const auto v = values.to(torch::kCPU, torch::kDouble), ix = indices.cpu();
    for (int64_t row = 0; row < v.size(0); ++row) {
      auto& predictions = out[batch->indices[row]];
      for (int64_t j = 0; j < k; ++j) {
        const auto index = ix[row][j].item<int64_t>();
        predictions.push_back({index, metadata_.label(index), v[row][j].item<double>()});
      }
    }
  }
  return out;
}

std::vector<torch::Tensor> Predictor::segment(const std::vector<ImageSource>& images) const {
  check_task("segmentation", "segment");
  const auto transform = std::make_shared<const data::SegmentationTransform>(
      io::segmentation_transform_options(*metadata_.transform));
  // One image a call: each keeps its aspect ratio, so transformed images differ in size.
  auto loader = image_loader(images, [transform](const torch::Tensor& image) { return transform->eval_image(image); },
                             1, options_.num_workers());
  std::vector<torch::Tensor> out(images.size());
  auto epoch = loader.epoch(0);
  while (auto batch = epoch->next()) {
    const auto logits = runner_->forward(batch->fields[0].to(runner_->device()));
    const auto size = batch->fields[1][0];
    const auto resized = torch::nn::functional::interpolate(
        logits, torch::nn::functional::InterpolateFuncOptions()
                    .size(std::vector<int64_t>{size[0].item<int64_t>(), size[1].item<int64_t>()})
                    .mode(torch::kBilinear)
                    .align_corners(false));
    out[batch->indices[0]] = resized.argmax(1)[0].cpu();
  }
  return out;
}

}  // namespace torchtl
