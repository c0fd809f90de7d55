#include "io/model_file.h"

#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>

#include <fstream>

#include "data/map_file.h"
#include "io/load_model.h"
#include "version.h"

namespace torchtl::io {
namespace {

std::string where(const std::string& source) { return "model file '" + source + "'"; }

const Json& member(const Json& object, const std::string& key, const std::string& field, const std::string& source) {
  const Json* value = object.find(key);
  TORCH_CHECK_VALUE(value != nullptr, where(source), ": field '", field, "' is missing");
  return *value;
}

// The typed accessors' TypeError names the field; this adds the file.
template <typename F>
auto typed(const std::string& source, F&& get) {
  try {
    return get();
  } catch (const c10::TypeError& e) {
    TORCH_CHECK_TYPE(false, where(source), ": ", e.what_without_backtrace());
    throw;
  }
}

std::vector<double> channel_values(const Json& list, const std::string& field, const std::string& source,
                                   bool positive) {
  std::vector<double> out;
  typed(source, [&] {
    for (const auto& item : list.as_array(field)) out.push_back(item.as_double(field + "[]"));
    return 0;
  });
  TORCH_CHECK_VALUE(out.size() == 3, where(source), ": field '", field, "' must hold 3 values (R, G, B), not ",
                    out.size());
  if (positive) {
    for (const double v : out) TORCH_CHECK_VALUE(v > 0.0, where(source), ": field '", field, "' must be positive, got ", v);
  }
  return out;
}

Json numbers(const std::vector<double>& values) {
  std::vector<Json> out;
  for (const double v : values) out.emplace_back(v);
  return Json::array(std::move(out));
}

Json transform_json(const EvalTransform& t, const std::string& task) {
  Json out = Json::object();
  out.set("resize_size", Json(t.resize_size));
  if (task == "classification") {
    out.set("crop_size", Json(t.crop_size));
    out.set("interpolation", Json(t.interpolation));
  }
  out.set("mean", numbers(t.mean));
  out.set("std", numbers(t.std));
  return out;
}

EvalTransform parse_transform(const Json& json, const std::string& task, const std::string& source) {
  typed(source, [&] { return json.as_object("transform").size(); });
  EvalTransform t;
  std::vector<std::string> known = {"resize_size", "mean", "std"};
  if (task == "classification") {
    known.insert(known.end(), {"crop_size", "interpolation"});
    t.crop_size = typed(source, [&] { return member(json, "crop_size", "transform.crop_size", source).as_int("transform.crop_size"); });
    t.interpolation = typed(source, [&] {
      return member(json, "interpolation", "transform.interpolation", source).as_string("transform.interpolation");
    });
  } else {
    t.crop_size = 0;
  }
  for (const auto& [key, value] : json.as_object("transform")) {
    TORCH_CHECK_VALUE(std::find(known.begin(), known.end(), key) != known.end(), where(source), ": field 'transform.",
                      key, "' is not a ", task, " transform field (expected ", c10::Join(", ", known), ")");
  }
  t.resize_size = typed(source, [&] { return member(json, "resize_size", "transform.resize_size", source).as_int("transform.resize_size"); });
  t.mean = channel_values(member(json, "mean", "transform.mean", source), "transform.mean", source, false);
  t.std = channel_values(member(json, "std", "transform.std", source), "transform.std", source, true);
  return t;
}

}  // namespace

std::optional<int64_t> ModelMetadata::num_classes() const {
  const Json* n = builder_args.find("num_classes");
  if (n == nullptr) return std::nullopt;
  return n->as_int("builder_args.num_classes");
}

std::string ModelMetadata::label(int64_t index) const {
  if (classes && index >= 0 && index < static_cast<int64_t>(classes->size())) return (*classes)[index];
  return std::to_string(index);
}

void check_model_metadata(const ModelMetadata& m, const std::string& source) {
  TORCH_CHECK_VALUE(m.format_version >= 1 && m.format_version <= kModelFormatVersion, where(source),
                    ": field 'format_version' is ", m.format_version, "; this torchtl (", TORCHTL_VERSION,
                    ") reads versions 1 to ", kModelFormatVersion, " (a newer torchtl wrote it?)");
  TORCH_CHECK_VALUE(m.task == "classification" || m.task == "segmentation", where(source), ": field 'task' is '",
                    m.task, "'; expected 'classification' or 'segmentation'");
  TORCH_CHECK_VALUE(!m.builder.empty(), where(source), ": field 'builder' is empty");
  if (const auto task = builder_task(m.builder)) {
    TORCH_CHECK_VALUE(*task == m.task, where(source), ": field 'task' is '", m.task, "' but field 'builder' '",
                      m.builder, "' builds a ", *task, " model");
  }
  typed(source, [&] { return m.builder_args.as_object("builder_args").size(); });
  const auto num_classes = typed(source, [&] { return m.num_classes(); });
  if (num_classes) {
    TORCH_CHECK_VALUE(*num_classes > 0, where(source), ": field 'builder_args.num_classes' must be positive, got ",
                      *num_classes);
  }
  if (m.classes) {
    TORCH_CHECK_VALUE(!num_classes || static_cast<int64_t>(m.classes->size()) == *num_classes, where(source),
                      ": field 'classes' names ", m.classes->size(), " classes but field 'builder_args.num_classes' is ",
                      *num_classes);
  }
  if (m.transform) {
    const auto& t = *m.transform;
    TORCH_CHECK_VALUE(t.resize_size > 0, where(source), ": field 'transform.resize_size' must be positive, got ",
                      t.resize_size);
    if (m.task == "classification") {
      TORCH_CHECK_VALUE(t.crop_size > 0, where(source), ": field 'transform.crop_size' must be positive, got ",
                        t.crop_size);
      // The data pipeline's eval resize is v2's antialiased bilinear one (data/transforms.h).
      TORCH_CHECK_VALUE(t.interpolation == "bilinear", where(source), ": field 'transform.interpolation' is '",
                        t.interpolation, "'; torchtl's evaluation transform resizes with 'bilinear' only");
    }
    TORCH_CHECK_VALUE(t.mean.size() == 3 && t.std.size() == 3, where(source),
                      ": fields 'transform.mean' and 'transform.std' must hold 3 values each");
    for (const double s : t.std) TORCH_CHECK_VALUE(s > 0.0, where(source), ": field 'transform.std' must be positive, got ", s);
  }
}

std::string to_json(const ModelMetadata& m) {
  Json out = Json::object();
  out.set("format", Json(kModelFormat));
  out.set("format_version", Json(m.format_version));
  out.set("torchtl_version", Json(m.torchtl_version.empty() ? std::string(TORCHTL_VERSION) : m.torchtl_version));
  out.set("task", Json(m.task));
  out.set("builder", Json(m.builder));
  out.set("builder_args", m.builder_args);
  if (m.classes) {
    std::vector<Json> names(m.classes->begin(), m.classes->end());
    out.set("classes", Json::array(std::move(names)));
  } else {
    out.set("classes", Json());
  }
  out.set("transform", m.transform ? transform_json(*m.transform, m.task) : Json());
  return out.dump();
}

ModelMetadata parse_model_metadata(const std::string& text, const std::string& source) {
  const Json json = Json::parse(text, where(source) + " (" + kModelRecord + ")");
  typed(source, [&] { return json.as_object("(the record)").size(); });
  static const std::vector<std::string> known = {"format", "format_version", "torchtl_version", "task",
                                                 "builder", "builder_args", "classes", "transform"};
  for (const auto& [key, value] : json.as_object("")) {
    TORCH_CHECK_VALUE(std::find(known.begin(), known.end(), key) != known.end(), where(source), ": field '", key,
                      "' is not a torchtl model-file field (expected ", c10::Join(", ", known), ")");
  }
  const auto format = typed(source, [&] { return member(json, "format", "format", source).as_string("format"); });
  TORCH_CHECK_VALUE(format == kModelFormat, where(source), ": field 'format' is '", format, "', not '", kModelFormat, "'");
  ModelMetadata m;
  typed(source, [&] {
    m.format_version = member(json, "format_version", "format_version", source).as_int("format_version");
    m.torchtl_version = member(json, "torchtl_version", "torchtl_version", source).as_string("torchtl_version");
    m.task = member(json, "task", "task", source).as_string("task");
    m.builder = member(json, "builder", "builder", source).as_string("builder");
    m.builder_args = member(json, "builder_args", "builder_args", source);
    const Json& classes = member(json, "classes", "classes", source);
    if (!classes.is_null()) {
      m.classes.emplace();
      for (const auto& name : classes.as_array("classes")) m.classes->push_back(name.as_string("classes[]"));
    }
    return 0;
  });
  TORCH_CHECK_VALUE(m.task == "classification" || m.task == "segmentation", where(source), ": field 'task' is '",
                    m.task, "'; expected 'classification' or 'segmentation'");
  if (const auto task = builder_task(m.builder)) {
    TORCH_CHECK_VALUE(*task == m.task, where(source), ": field 'task' is '", m.task, "' but field 'builder' '",
                      m.builder, "' builds a ", *task, " model");
  }
  const Json& transform = member(json, "transform", "transform", source);
  if (!transform.is_null()) m.transform = parse_transform(transform, m.task, source);
  check_model_metadata(m, source);
  return m;
}

std::optional<std::string> read_model_record(const std::string& path) {
  if (!std::ifstream(path, std::ios::binary).good()) {
    throw data::FileNotFoundError("cannot open '" + path + "': no such file or not readable");
  }
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, "'", path, "' is not a model file (not a PyTorch archive: truncated, or not written by ",
                      "torch.save): ", e.what_without_backtrace());
  }
  TORCH_CHECK_VALUE(!reader->hasRecord("constants.pkl"), "'", path, "' is not a model file: a TorchScript archive ",
                    "(torch.jit.save); a model file is torch.save's state dict (torchtl.save_model)");
  // An AOTInductor package from torchtl.export carries the same record beside its compiled model.
  const bool package = reader->hasRecord("archive_format");
  TORCH_CHECK_VALUE(package || reader->hasRecord("data.pkl"), "'", path, "' is not a model file: a PyTorch archive ",
                    "without data.pkl (not torch.save output)");
  if (!reader->hasRecord(kModelRecord)) return std::nullopt;
  try {
    auto [data, size] = reader->getRecord(kModelRecord);
    return std::string(static_cast<const char*>(data.get()), size);
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, where(path), ": cannot read ", kModelRecord, ": ", e.what_without_backtrace());
  }
}

std::optional<ModelMetadata> read_model_metadata(const std::string& path) {
  const auto record = read_model_record(path);
  if (!record) return std::nullopt;
  return parse_model_metadata(*record, path);
}

void save_model_file(const StateDict& weights, const ModelMetadata& metadata, const std::string& path) {
  check_model_metadata(metadata, path);
  save_pickle(to_ivalue(weights), path, {{kModelRecord, to_json(metadata)}});
}

data::ClassificationTransformOptions classification_transform_options(const EvalTransform& t) {
  return data::ClassificationTransformOptions().train(false).resize_size(t.resize_size).size(t.crop_size).mean(t.mean).std(t.std);
}

data::SegmentationTransformOptions segmentation_transform_options(const EvalTransform& t) {
  return data::SegmentationTransformOptions().train(false).base_size(t.resize_size).mean(t.mean).std(t.std);
}

EvalTransform eval_transform(const data::ClassificationTransformOptions& o) {
  EvalTransform t;
  t.resize_size = o.resize_size();
  t.crop_size = o.size();
  t.mean = o.mean();
  t.std = o.std();
  return t;
}

EvalTransform eval_transform(const data::SegmentationTransformOptions& o) {
  EvalTransform t;
  t.resize_size = o.base_size();
  t.crop_size = 0;
  t.mean = o.mean();
  t.std = o.std();
  return t;
}

EvalTransform default_eval_transform(const std::string& task) {
  return task == "segmentation" ? eval_transform(data::SegmentationTransformOptions()) :
                                  eval_transform(data::ClassificationTransformOptions());
}

}  // namespace torchtl::io
