#pragma once
// Where fit() and evaluate() take their batches from: torchtl's threaded loader, or any other
// producer of (input, target) batches (the Python bindings wrap a Python iterable in one).
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>

#include "data/loader.h"

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

}  // namespace torchtl::engine
