#pragma once
// Map-file datasets as torch::data datasets: C++ users hand them to torch::data::make_data_loader;
// Python goes through torchtl's threaded loader (data/loader.h). Images are read and decoded when
// a sample is asked for, never all up front.
#include <torch/data/datasets/base.h>
#include <torch/data/example.h>
#include <torch/arg.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "data/map_file.h"
#include "data/transforms.h"

namespace torchtl::data {

struct MapDatasetOptions {
  // Null: the decoded uint8 3 x H x W image is returned as is.
  TORCH_ARG(std::shared_ptr<const ClassificationTransform>, transform) = nullptr;
  TORCH_ARG(int64_t, num_classes) = -1;
  // Seeds the per-sample augmentation generators (see sample_generator).
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(bool, skip_bad_lines) = false;
};

struct SegmentationMapDatasetOptions {
  // Null: (uint8 3 x H x W image, int64 H x W mask) as decoded.
  TORCH_ARG(std::shared_ptr<const SegmentationTransform>, transform) = nullptr;
  // When positive, a mask value >= num_classes that is not ignore_index is an error naming the
  // mask file (-1: unchecked).
  TORCH_ARG(int64_t, num_classes) = -1;
  TORCH_ARG(int64_t, ignore_index) = 255;
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(bool, skip_bad_lines) = false;
};

// What both map-file datasets share: the parsed map file, the options, and the epoch that the
// augmentation draws depend on, with (seed, epoch(), index). `Dataset` defines load() and
// sample_name(); both are thread-safe, so any number of threads may load at once, and their
// errors name the map file, the line and the path, keeping their type (FileNotFoundError,
// ValueError, c10::Error).
template <typename Dataset, typename Options>
class MapFileDataset : public torch::data::datasets::Dataset<Dataset> {
 public:
  // torch::data's interface.
  torch::data::Example<> get(size_t index) override { return static_cast<const Dataset&>(*this).load(index, epoch_); }
  std::optional<size_t> size() const override { return map_.entries.size(); }

  void set_epoch(uint64_t epoch) { epoch_ = epoch; }
  uint64_t epoch() const { return epoch_; }
  const MapFile& map_file() const { return map_; }
  const Options& options() const { return options_; }

 protected:
  MapFileDataset(MapFile map, Options options) : map_(std::move(map)), options_(std::move(options)) {}

  // Throws IndexError unless `index` is a sample of the map file.
  void check_index(size_t index) const;

  MapFile map_;
  Options options_;

 private:
  uint64_t epoch_ = 0;
};

// path<TAB>label lines -> Example{float32 image, int64 scalar label}. (map_file(), not map(): the
// latter is torch::data's Dataset::map(transform), used as ds.map(Stack<>()).)
class MapDataset : public MapFileDataset<MapDataset, MapDatasetOptions> {
 public:
  explicit MapDataset(const std::string& map_file, MapDatasetOptions options = {});

  torch::data::Example<> load(size_t index, uint64_t epoch) const;
  // "map file 'x', line N" for sample `index`: how loaders name a sample in their own errors.
  std::string sample_name(size_t index) const;
};

// image<TAB>mask lines -> Example{float32 image, int64 H x W mask}.
class SegmentationMapDataset : public MapFileDataset<SegmentationMapDataset, SegmentationMapDatasetOptions> {
 public:
  explicit SegmentationMapDataset(const std::string& map_file, SegmentationMapDatasetOptions options = {});

  torch::data::Example<> load(size_t index, uint64_t epoch) const;
  // As MapDataset's, naming the mask file too.
  std::string sample_name(size_t index) const;
};

}  // namespace torchtl::data
