#include "engine/batch_source.h"

#include "models/fast_path.h"

namespace torchtl::engine {

ShardedSource::ShardedSource(const BatchSource& source, const Distributed& distributed, bool pad) : source_(source) {
  if (source.loader()) shard_.emplace(distributed.shard(*source.loader(), pad));
}

int64_t ShardedSource::num_batches() const {
  return shard_ ? static_cast<int64_t>(shard_->num_batches()) : source_.num_batches();
}

std::function<std::optional<data::Batch>()> ShardedSource::epoch(uint64_t epoch) const {
  return shard_ ? LoaderSource(*shard_).epoch(epoch) : source_.epoch(epoch);
}

DeviceBatches::DeviceBatches(const BatchSource& source, uint64_t epoch, torch::Device device, FeatureCache* cache,
                             FeatureFn features)
    : device_(device), cache_(source.loader() && features ? cache : nullptr), features_(std::move(features)) {
  from_cache_ = cache_ && cache_->covers(*source.loader(), epoch);
  if (from_cache_) {
    cached_batches_ = source.loader()->batch_indices(epoch);
  } else {
    stream_ = source.epoch(epoch);
  }
}

std::optional<DeviceBatch> DeviceBatches::next(std::vector<std::string>& skipped) {
  if (from_cache_) {
    if (next_cached_ == cached_batches_.size()) return std::nullopt;
    DeviceBatch out;
    out.indices = cached_batches_[next_cached_++];
    std::tie(out.input, out.target) = cache_->batch(out.indices);
    out.input_is_features = true;
    return out;
  }
  auto batch = stream_();
  while (batch && batch->fields.empty()) {  // only samples skipped by on_error="skip"
    skipped.insert(skipped.end(), batch->skipped.begin(), batch->skipped.end());
    batch = stream_();
  }
  if (!batch) return std::nullopt;
  skipped.insert(skipped.end(), batch->skipped.begin(), batch->skipped.end());
  DeviceBatch out;
  out.input = models::to_fast_layout(batch->fields.at(0).to(device_, /*non_blocking=*/true));
  out.target = batch->fields.at(1).to(device_, /*non_blocking=*/true);
  out.indices = std::move(batch->indices);
  if (cache_) {
    torch::NoGradGuard no_grad;
    out.input = features_(out.input);
    out.input_is_features = true;
    cache_->store(out.indices, out.input, out.target);
  }
  return out;
}

}  // namespace torchtl::engine
