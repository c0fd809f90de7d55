#pragma once
// Where fit() and evaluate() take their batches from: torchtl's threaded loader, or any other
// producer of (input, target) batches (the Python bindings wrap a Python iterable in one); this
// rank's share of it; and the one way both loops fetch a batch onto the model's device.
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "engine/distributed.h"
#include "engine/feature_cache.h"

namespace torchtl::engine {

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // Batches per epoch (the learning-rate schedules count iterations with it).
  virtual int64_t num_batches() const = 0;
  // One pass: the returned function yields the next batch, then nothing once the pass is over.
  // A batch may carry no fields, only the messages of samples skipped by on_error="skip".
  virtual std::function<std::optional<data::Batch>()> epoch(uint64_t epoch) const = 0;
  // The threaded loader behind this source, if any: the feature cache needs its sample indices.
  virtual const data::ThreadedLoader* loader() const { return nullptr; }
};

class LoaderSource : public BatchSource {
 public:
  explicit LoaderSource(const data::ThreadedLoader& loader) : loader_(loader) {}
  int64_t num_batches() const override { return static_cast<int64_t>(loader_.num_batches()); }
  std::function<std::optional<data::Batch>()> epoch(uint64_t epoch) const override {
    std::shared_ptr<data::LoaderEpoch> stream = loader_.epoch(epoch);
    return [stream]() { return stream->next(); };
  }
  const data::ThreadedLoader* loader() const override { return &loader_; }

 private:
  const data::ThreadedLoader& loader_;
};

// This rank's part of `source`: torchtl's loader is sharded here (`pad`: equal shards, so ranks take
// as many training steps; otherwise the disjoint shards an exact evaluation needs). Any other
// source is the caller's to shard (a DistributedSampler), and is used as it is.
class ShardedSource : public BatchSource {
 public:
  ShardedSource(const BatchSource& source, const Distributed& distributed, bool pad);
  int64_t num_batches() const override;
  std::function<std::optional<data::Batch>()> epoch(uint64_t epoch) const override;
  const data::ThreadedLoader* loader() const override { return shard_ ? &*shard_ : nullptr; }

 private:
  const BatchSource& source_;
  std::optional<data::ThreadedLoader> shard_;
};

// A batch on the model's device: the images (in the fast path's layout) or their frozen features
// from a FeatureCache, the targets, and the dataset indices of its rows (empty when unknown).
struct DeviceBatch {
  torch::Tensor input, target;
  bool input_is_features = false;
  std::vector<int64_t> indices;
};

// One pass over a source as DeviceBatches: how train_one_epoch and evaluate both fetch batches.
// With a cache and the frozen part's forward (`features`), the pass comes from the cache when it
// holds the whole epoch, and fills it otherwise. Only torchtl's loader, whose sample indices are
// known, is cached.
class DeviceBatches {
 public:
  using FeatureFn = std::function<torch::Tensor(const torch::Tensor&)>;
  DeviceBatches(const BatchSource& source, uint64_t epoch, torch::Device device, FeatureCache* cache = nullptr,
                FeatureFn features = nullptr);
  // The next batch, or nothing once the pass is over; the messages of samples on_error="skip"
  // dropped are appended to `skipped`.
  std::optional<DeviceBatch> next(std::vector<std::string>& skipped);
  bool from_cache() const { return from_cache_; }

 private:
  torch::Device device_;
  FeatureCache* cache_;
  FeatureFn features_;
  bool from_cache_ = false;
  std::function<std::optional<data::Batch>()> stream_;
  std::vector<std::vector<int64_t>> cached_batches_;
  size_t next_cached_ = 0;
};

}  // namespace torchtl::engine
