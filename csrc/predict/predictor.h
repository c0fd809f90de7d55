#pragma once
// Prediction on images from a model file alone: torchtl::Predictor decodes the images
// (TorchCodec), applies the file's evaluation transform (torchvision.transforms.v2's, in C++),
// batches them on the loader's threads while the model runs, and returns class probabilities or
// masks. Python's torchtl.Predictor is this class.
//
//   torchtl::Predictor predictor("best.pt");            // CUDA when available, else the CPU
//   for (const auto& p : predictor.classify({"cat.jpg"}, 3)[0])
//     std::cout << p.label << " " << p.probability << "\n";
#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/model_file.h"
#include "predict/model_runner.h"

namespace torchtl {

// One class of one image: its index, its label (the class name from the model file, or the index
// as text) and its softmax probability.
struct Prediction {
  int64_t index = 0;
  std::string label;
  double probability = 0.0;
};

// An image to predict on: a file path, or the encoded file's bytes (JPEG, PNG, WebP, GIF, BMP).
class ImageSource {
 public:
  ImageSource(std::string path) : path_(std::move(path)) {}  // NOLINT: a path reads as an image
  ImageSource(const char* path) : path_(path) {}              // NOLINT
  // A 1-D uint8 tensor of the encoded bytes; `name` (default "image <i>") names it in errors.
  explicit ImageSource(torch::Tensor encoded, std::string name = "");
  static ImageSource from_bytes(const std::string& bytes, std::string name = "");

  bool is_path() const { return !encoded_.defined(); }
  const std::string& path() const { return path_; }
  // How errors name the image: "image 'a.jpg'", or "image <index> (<n> encoded bytes)".
  std::string describe(size_t index) const;
  // 3 x H x W uint8 RGB; throws ValueError (FileNotFoundError for a missing file) naming the image.
  torch::Tensor decode(size_t index) const;

 private:
  std::string path_;  // empty for bytes, or their name
  torch::Tensor encoded_;
};

struct PredictorOptions {
  // Images per model call (classification; segmentation runs one image a call, at its own size).
  TORCH_ARG(int64_t, batch_size) = 8;
  // Loader threads that decode and transform while the model runs; 0: the calling thread.
  TORCH_ARG(int64_t, num_workers) = 2;
};

class Predictor {
 public:
  // Loads a model file (torchtl::load_model), or an AOTInductor package from torchtl.export /
  // torchtl.quantize when the path ends in .pt2 (predict/compiled_model.h). `device`: default CUDA
  // when available, else the CPU; a package runs on the device it was compiled for.
  // Throws naming the file and the field when it is no model file or has no evaluation transform.
  explicit Predictor(const std::string& model_file, std::optional<torch::Device> device = std::nullopt,
                     PredictorOptions options = {});
  // Over any runner (an eager module, a compiled package) with the metadata that feeds it;
  // `source` names it in errors.
  Predictor(std::shared_ptr<predict::ModelRunner> runner, io::ModelMetadata metadata, std::string source,
            PredictorOptions options = {});

  // Per image, the `topk` most probable classes, highest first (topk is capped at the class count).
  std::vector<std::vector<Prediction>> classify(const std::vector<ImageSource>& images, int64_t topk = 5) const;
  // Per image, an H x W int64 mask of class indices at the image's own size: the logits at the
  // transformed size, resized back bilinearly (align_corners=False, as the model resizes its own
  // output), then argmax over the classes. On the CPU.
  std::vector<torch::Tensor> segment(const std::vector<ImageSource>& images) const;

  const io::ModelMetadata& metadata() const { return metadata_; }
  const std::string& task() const { return metadata_.task; }
  torch::Device device() const { return runner_->device(); }
  const PredictorOptions& options() const { return options_; }

 private:
  Predictor(std::pair<std::shared_ptr<predict::ModelRunner>, io::ModelMetadata> opened, const std::string& source,
            PredictorOptions options);
  void check_task(const std::string& task, const char* call) const;

  std::shared_ptr<predict::ModelRunner> runner_;
  io::ModelMetadata metadata_;
  std::string source_;
  PredictorOptions options_;
};

}  // namespace torchtl
