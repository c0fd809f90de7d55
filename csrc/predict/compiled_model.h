#pragma once
// An AOTInductor package (.pt2) that torchtl.export wrote, run from C++ through LibTorch's own
// torch::inductor::AOTIModelPackageLoader: no torchtl model code, no Python. torchtl.export checked
// the package against torchtl's and torchvision's forwards before writing it (its parity record
// is inside), and wrote into it what a runner needs to call it: the input size it was compiled
// for, whether the batch size is free, the task (torchtl/pt2.py).
//
//   torchtl::predict::CompiledModel model("resnet18.pt2");
//   auto logits = model.forward(batch);  // float32 N x 3 x H x W, normalised
//
// It is a ModelRunner, so torchtl::Predictor runs it with the package's own metadata: a
// Predictor opened on a path ending in .pt2 does (predict/predictor.h).
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "predict/model_runner.h"

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace torchtl::predict {

// Whether `path` names an AOTInductor package (its name ends in .pt2, as torch requires of them).
bool is_compiled_package(const std::string& path);

class CompiledModel : public ModelRunner {
 public:
  // Loads the package onto the device it was compiled for (CUDA packages: `device`'s index, default
  // the current device). Throws naming the path when the file is missing, is no AOTInductor package,
  // was not written by torchtl.export, or is for CUDA on a machine without it.
  explicit CompiledModel(const std::string& package_path, std::optional<torch::Device> device = std::nullopt);
  ~CompiledModel() override;
  CompiledModel(CompiledModel&&) noexcept;
  CompiledModel& operator=(CompiledModel&&) noexcept;

  // float32 N x 3 x H x W, normalised -> classification logits N x classes, or segmentation
  // scores N x classes x H x W. A classification package takes exactly its input size (anything
  // else throws, naming both); a segmentation package's input is resized to its size and the
  // scores resized back bilinearly (align_corners=False, as the model resizes its own output).
  torch::Tensor forward(const torch::Tensor& batch) override;

  torch::Device device() const override { return device_; }
  const std::string& task() const { return task_; }
  // Height and width the package was compiled for.
  const std::vector<int64_t>& input_size() const { return input_size_; }
  bool dynamic_batch() const { return dynamic_batch_; }
  // "float32", or "int8" for a torchtl.quantize package.
  const std::string& precision() const { return precision_; }
  // The model file's metadata record (extra/torchtl_model.json: classes, evaluation transform), as stored.
  const std::string& model_record() const { return model_record_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  torch::Device device_;
  std::string task_;
  std::vector<int64_t> input_size_;
  bool dynamic_batch_ = true;
  std::string precision_;
  std::string model_record_;
};

}  // namespace torchtl::predict
