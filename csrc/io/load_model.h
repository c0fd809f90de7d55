#pragma once
// Rebuilding a model from its model file (io/model_file.h): the builder and its arguments from the
// metadata, the weights from the state dict beside it. A bare state dict (torchvision's, or a file
// of an earlier torchtl) loads when the builder is named.
#include <torch/arg.h>
#include <torch/nn/module.h>

#include <memory>
#include <optional>
#include <string>

#include "io/model_file.h"

namespace torchtl {

struct LoadModelOptions {
  // For a file without metadata: the builder ("resnet50", "deeplabv3_resnet101"). With metadata,
  // when given, it must agree with the file.
  TORCH_ARG(std::string, arch) = "";
  // For a file without metadata; default: the head's rows in the weights. With metadata, when
  // given, it must agree with the file.
  TORCH_ARG(std::optional<int64_t>, num_classes) = std::nullopt;
};

}  // namespace torchtl

namespace torchtl::io {

// The task of a builder torchtl's C++ builds ("classification" for the ResNets, "segmentation" for
// deeplabv3_* and fcn_*), or nothing for another name.
std::optional<std::string> builder_task(const std::string& builder);

// Throws ValueError naming `source` and the field unless torchtl's C++ library builds the
// metadata's builder with its builder_args (names, types, values the builder fixes).
void check_builder_args(const ModelMetadata& metadata, const std::string& source);

// A freshly initialised C++ module as `metadata` describes it. Throws ValueError naming `source`
// and the field for an unknown builder or builder argument.
std::shared_ptr<torch::nn::Module> build_model(const ModelMetadata& metadata, const std::string& source);

struct ModelFile {
  // The file's metadata; for a bare state dict, the one `options` describe, with the task's default
  // evaluation transform and no class names.
  ModelMetadata metadata;
  StateDict weights;
};

// A model file's metadata and weights, checked against each other and against `options` (the
// head's rows equal builder_args.num_classes). What load_model builds from, in C++ and in Python.
ModelFile read_model_file(const std::string& path, const LoadModelOptions& options = {});

}  // namespace torchtl::io

namespace torchtl {

struct LoadedModel {
  std::shared_ptr<torch::nn::Module> module;  // in eval mode, on the CPU
  io::ModelMetadata metadata;  // as io::read_model_file gives it
  // The model's logits for a batch: N x classes, or a segmentation model's "out" (N x classes x H x W).
  torch::Tensor forward(const torch::Tensor& batch) const;
};

// The model of a model file, weights loaded. Throws ValueError naming the file and the field when
// the metadata is missing (and no arch is given), damaged, or contradicts the weights.
LoadedModel load_model(const std::string& path, const LoadModelOptions& options = {});

}  // namespace torchtl
