#include "data/datasets.h"

#include "data/image.h"

namespace torchtl::data {
namespace {

// Runs `load` and re-throws any error with `context` in front, keeping its Python type.
template <typename F>
auto with_context(const std::string& context, F&& load) -> decltype(load()) {
  try {
    return load();
  } catch (const FileNotFoundError& e) {
    throw FileNotFoundError(context + ": " + e.what_without_backtrace());
  } catch (const c10::ValueError& e) {
    throw c10::ValueError(context + ": " + e.what_without_backtrace());
  } catch (const c10::Error& e) {
    throw c10::Error(context + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw c10::Error(context + ": " + e.what());
  }
}

// "map file 'x', line N, image 'y'": where an image's error happened.
std::string image_context(const MapFile& map, const MapEntry& entry) {
  return data::where_in_map_file(map, entry) + ", image '" + printable(entry.path) + "'";
}

}  // namespace

template <typename Dataset, typename Options>
void MapFileDataset<Dataset, Options>::check_index(size_t index) const {
  if (index >= map_.entries.size()) {
    throw c10::IndexError("index " + std::to_string(index) + " is out of range for map file '" + printable(map_.path) +
                          "' with " + std::to_string(map_.entries.size()) + " samples");
  }
}

template class MapFileDataset<MapDataset, MapDatasetOptions>;
template class MapFileDataset<SegmentationMapDataset, SegmentationMapDatasetOptions>;

MapDataset::MapDataset(const std::string& map_file, MapDatasetOptions options)
    : MapFileDataset(read_map_file(map_file, MapFileOptions()
                                                 .kind(MapKind::Classification)
                                                 .num_classes(options.num_classes())
                                                 .skip_bad_lines(options.skip_bad_lines())),
                     std::move(options)) {}

std::string MapDataset::sample_name(size_t index) const {
  check_index(index);
  return data::where_in_map_file(map_, map_.entries[index]);
}

torch::data::Example<> MapDataset::load(size_t index, uint64_t epoch) const {
  check_index(index);
  const auto& entry = map_.entries[index];
  auto image = with_context(image_context(map_, entry), [&] {
    torch::NoGradGuard no_grad;
    auto decoded = decode_rgb(read_file(entry.path));
    if (!options_.transform()) return decoded;
    auto generator = sample_generator(options_.seed(), epoch, index);
    return (*options_.transform())(decoded, generator);
  });
  return {image, torch::tensor(entry.label, torch::kInt64)};
}

std::vector<torch::data::Example<>> MapDataset::load_on(const std::vector<size_t>& indices, uint64_t epoch,
                                                        const torch::Device& device) const {
  std::vector<torch::Tensor> encoded;
  encoded.reserve(indices.size());
  for (const auto index : indices) {
    check_index(index);
    const auto& entry = map_.entries[index];
    encoded.push_back(with_context(image_context(map_, entry), [&] { return read_file(entry.path); }));
  }
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> images;
  try {
    images = decode_rgb_on(encoded, device);
  } catch (...) {
    // A batch's error does not say which image failed: decoding each alone names it.
    for (size_t i = 0; i < indices.size(); ++i) {
      with_context(image_context(map_, map_.entries[indices[i]]), [&] { return decode_rgb_on({encoded[i]}, device); });
    }
    throw;
  }
  std::vector<torch::data::Example<>> examples;
  examples.reserve(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) {
    const auto& entry = map_.entries[indices[i]];
    auto image = with_context(image_context(map_, entry), [&] {
      if (!options_.transform()) return images[i];
      auto generator = sample_generator(options_.seed(), epoch, indices[i]);
      return (*options_.transform())(images[i], generator);
    });
    examples.push_back({image, torch::tensor(entry.label, torch::kInt64).to(device)});
  }
  return examples;
}

SegmentationMapDataset::SegmentationMapDataset(const std::string& map_file, SegmentationMapDatasetOptions options)
    : MapFileDataset(read_map_file(map_file,
                                   MapFileOptions().kind(MapKind::Segmentation).skip_bad_lines(options.skip_bad_lines())),
                     std::move(options)) {
  TORCH_CHECK_VALUE(options_.num_classes() == -1 || options_.num_classes() > 0,
                    "num_classes must be positive (or -1: unchecked), got ", options_.num_classes());
}

std::string SegmentationMapDataset::sample_name(size_t index) const {
  check_index(index);
  const auto& entry = map_.entries[index];
  // The mask is named too: an error found in a batch's targets (e.g. by fit) points at the file.
  return data::where_in_map_file(map_, entry) + " (mask '" + printable(entry.target) + "')";
}

torch::data::Example<> SegmentationMapDataset::load(size_t index, uint64_t epoch) const {
  check_index(index);
  const auto& entry = map_.entries[index];
  const auto where = data::where_in_map_file(map_, entry);
  const auto image_path = printable(entry.path), mask_path = printable(entry.target);
  torch::NoGradGuard no_grad;
  auto image = with_context(where + ", image '" + image_path + "'", [&] { return decode_rgb(read_file(entry.path)); });
  auto mask = with_context(where + ", mask '" + mask_path + "'", [&] { return decode_mask(read_file(entry.target)); });
  TORCH_CHECK_VALUE(mask.size(0) == image.size(1) && mask.size(1) == image.size(2), where, ": mask '", mask_path,
                    "' is ", mask.size(0), " x ", mask.size(1), " but image '", image_path, "' is ", image.size(1),
                    " x ", image.size(2));
  // Checked on the stored values, before any resize: one reduction over a mask that was just
  // decoded, where the file can still be named (a loss only sees a batch of tensors).
  const auto num_classes = options_.num_classes();
  if (num_classes > 0 && mask.max().item<int64_t>() >= num_classes) {
    auto bad = mask.ge(num_classes).logical_and_(mask.ne(options_.ignore_index()));
    if (bad.any().item<bool>()) {
      TORCH_CHECK_VALUE(false, where, ": mask '", mask_path, "' holds class ", mask.masked_select(bad).max().item<int64_t>(),
                        " but num_classes=", num_classes, " (values must be below ", num_classes, " or ignore_index ",
                        options_.ignore_index(), ")");
    }
  }
  if (!options_.transform()) return {image, mask.to(torch::kInt64)};
  return with_context(where + ", image '" + image_path + "'", [&]() -> torch::data::Example<> {
    auto generator = sample_generator(options_.seed(), epoch, index);
    auto [x, m] = (*options_.transform())(image, mask, generator);
    return {x, m};
  });
}

}  // namespace torchtl::data
