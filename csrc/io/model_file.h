#pragma once
// Self-describing model files. A torchtl model file is a torch.save zip of the plain state dict
// (so torchvision_model.load_state_dict(torch.load(path)) keeps working) with one more record in
// the same archive, extra/torchtl_model.json, which torch.load ignores. It says how to rebuild
// the model and how to feed it:
//
//   {"format": "torchtl.model", "format_version": 1, "torchtl_version": "0.1.0",
//    "task": "classification",                 // or "segmentation"
//    "builder": "resnet18",                    // a torchtl builder name
//    "builder_args": {"num_classes": 2, ...},  // its keyword arguments (see docs/cpp.md)
//    "classes": ["ants", "bees"],              // or null: labels are the indices as text
//    "transform": {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear",
//                  "mean": [...], "std": [...]}}   // segmentation: resize_size, mean, std
//
// This file is the one definition of that record: Python reads and writes it through these
// functions too (torchtl/model_file.py).
#include <optional>
#include <string>
#include <vector>

#include "data/transforms.h"
#include "io/json.h"
#include "io/weights.h"

namespace torchtl::io {

// The record's name inside the archive (under the archive's top folder, as torch.save names it).
inline constexpr const char* kModelRecord = "extra/torchtl_model.json";
inline constexpr const char* kModelFormat = "torchtl.model";
inline constexpr int64_t kModelFormatVersion = 1;

// The evaluation transform, torchvision's references' eval presets. Classification: Resize(resize_size)
// (shorter side, antialiased `interpolation`), CenterCrop(crop_size), ToDtype(float32, scale=True),
// Normalize(mean, std). Segmentation: Resize(resize_size) (shorter side), ToDtype, Normalize; crop_size unused (0).
struct EvalTransform {
  int64_t resize_size = 256;
  int64_t crop_size = 224;
  std::string interpolation = "bilinear";
  std::vector<double> mean = data::imagenet_mean();
  std::vector<double> std = data::imagenet_std();
};

struct ModelMetadata {
  std::string task = "classification";
  std::string builder;
  Json builder_args = Json::object();
  std::optional<std::vector<std::string>> classes;
  // Null when whoever wrote the file could not know it (fit on a Python loader of unknown
  // transforms); a Predictor then refuses the file, naming the field.
  std::optional<EvalTransform> transform;
  std::string torchtl_version;  // of the writer; empty: this library's
  int64_t format_version = kModelFormatVersion;

  // builder_args' num_classes, or nothing.
  std::optional<int64_t> num_classes() const;
  // The label of class `index`: its name, or the index as text.
  std::string label(int64_t index) const;
};

// The record as JSON.
std::string to_json(const ModelMetadata& metadata);
// Parses and checks a record: every field present, of its type and consistent (task and builder,
// class names and num_classes, the transform's fields). Throws ValueError (TypeError for a wrong
// type) naming `source` (the file) and the field.
ModelMetadata parse_model_metadata(const std::string& json, const std::string& source);
// The checks of parse_model_metadata on a record built in C++.
void check_model_metadata(const ModelMetadata& metadata, const std::string& source);

// The file's record; nothing for a torch.save file without one (a bare state dict, a file of an
// earlier torchtl). Throws naming the path when the file is missing, is not a PyTorch archive, or
// its record is damaged. An AOTInductor package of torchtl.export (.pt2) holds the record too.
std::optional<ModelMetadata> read_model_metadata(const std::string& path);
// The record's text as stored (what Python's read_model_metadata returns), or nothing.
std::optional<std::string> read_model_record(const std::string& path);

// Writes `weights` as a state dict torch.load reads, with `metadata` beside it, atomically.
void save_model_file(const StateDict& weights, const ModelMetadata& metadata, const std::string& path);

// The eval transform in the data pipeline's terms, and back.
data::ClassificationTransformOptions classification_transform_options(const EvalTransform& transform);
data::SegmentationTransformOptions segmentation_transform_options(const EvalTransform& transform);
EvalTransform eval_transform(const data::ClassificationTransformOptions& options);
EvalTransform eval_transform(const data::SegmentationTransformOptions& options);
// The references' default eval preset of `task`: 256/224 for classification, 520 for segmentation.
EvalTransform default_eval_transform(const std::string& task);

}  // namespace torchtl::io
