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
#include <type_traits>
#include <vector>

#include "data/loader.h"
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
  // load() for each of `indices`, with the images decoded and transformed on `device` and the
  // labels put there too: the loader's decode_device, one call per batch, so that on a CUDA
  // device nvJPEG decodes the batch's JPEGs at once (decode_rgb_on).
  std::vector<torch::data::Example<>> load_on(const std::vector<size_t>& indices, uint64_t epoch,
                                              const torch::Device& device) const;
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

// torchtl's threaded loader over a MapDataset or SegmentationMapDataset: what torchtl.data.DataLoader
// and the C++ programs run. With options.decode_device() set, each batch is decoded and transformed
// on that device by MapDataset::load_on; a SegmentationMapDataset decodes on the CPU only.
template <typename Dataset>
ThreadedLoader make_loader(std::shared_ptr<Dataset> dataset, const LoaderOptions& options) {
  BatchFn load_batch;
  if (const auto device = options.decode_device()) {
    if constexpr (std::is_same_v<std::remove_const_t<Dataset>, MapDataset>) {
      load_batch = [dataset, device = *device](const std::vector<size_t>& indices, uint64_t epoch) {
        std::vector<std::vector<torch::Tensor>> samples;
        for (auto& example : dataset->load_on(indices, epoch, device)) samples.push_back({example.data, example.target});
        return samples;
      };
    } else {
      TORCH_CHECK_VALUE(false, "decode_device=", *device, ": a SegmentationMapDataset decodes on the CPU only (its ",
                        "transforms crop images and masks together there); leave decode_device unset");
    }
  }
  return ThreadedLoader(
      [dataset](size_t index, uint64_t epoch) {
        auto example = dataset->load(index, epoch);
        return std::vector<torch::Tensor>{example.data, example.target};
      },
      [dataset](size_t index) { return dataset->sample_name(index); }, dataset->map_file().entries.size(), options,
      std::move(load_batch));
}

}  // namespace torchtl::data
