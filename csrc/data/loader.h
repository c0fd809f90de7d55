#pragma once
// A threaded batch loader: N C++ threads load whole batches (decode + transform + collate) with
// no GIL, a bounded number of batches ahead of the consumer, handed out in order. Unlike
// torch.utils.data.DataLoader's worker processes, samples never cross a process boundary, so
// there is no pickling and no shared-memory copy.
#include <torch/arg.h>
#include <torch/types.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

namespace torchtl::data {

// Loads sample `index` for `epoch` as a list of tensors (e.g. image, label); must be thread-safe.
using SampleFn = std::function<std::vector<torch::Tensor>(size_t index, uint64_t epoch)>;
// Names sample `index` in collation errors ("map file 'x', line N").
using SampleNameFn = std::function<std::string(size_t index)>;
// Loads the samples of one batch at once, each as SampleFn would (a dataset decoding a batch on a
// GPU); when given, the loader calls it instead of SampleFn. Throws if any sample fails; with
// skip_errors the loader then loads that batch one sample a call, to leave out only those that fail.
using BatchFn = std::function<std::vector<std::vector<torch::Tensor>>(const std::vector<size_t>& indices, uint64_t epoch)>;

// More loader threads than this are refused: each one holds a batch in memory, and past a few
// thousand, thread creation itself fails.
constexpr int64_t kMaxLoaderWorkers = 1024;

struct LoaderOptions {
  TORCH_ARG(int64_t, batch_size) = 1;
  TORCH_ARG(bool, shuffle) = false;
  // 0 loads on the calling thread; at most kMaxLoaderWorkers.
  TORCH_ARG(int64_t, num_workers) = 2;
  // Fixes the shuffling order of every epoch (with the epoch number).
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(bool, drop_last) = false;
  TORCH_ARG(bool, pin_memory) = false;
  // Batches loaded ahead per worker; bounds memory.
  TORCH_ARG(int64_t, prefetch_factor) = 2;
  // Drop samples that fail to load (reported in Batch::skipped) instead of raising.
  TORCH_ARG(bool, skip_errors) = false;
  // Data-parallel sharding, torch.utils.data.DistributedSampler's: rank r of num_replicas takes
  // every num_replicas-th sample of the epoch's order, starting at r.
  TORCH_ARG(int64_t, num_replicas) = 1;
  TORCH_ARG(int64_t, rank) = 0;
  // Pads the order by repeating its start so every rank gets as many samples (DistributedSampler
  // with drop_last=False: ranks take the same number of steps). false gives ranks the disjoint,
  // possibly unequal, shards an exact evaluation needs.
  TORCH_ARG(bool, pad_shards) = true;
  // Decode and transform each batch on this device (make_loader in data/datasets.h), where a CUDA
  // device decodes the batch's JPEGs in one nvJPEG call; the batches are then on it. Unset: each
  // sample is decoded and transformed on the CPU by the loader's threads.
  TORCH_ARG(std::optional<torch::Device>, decode_device) = std::nullopt;
};

// The order in which an epoch visits the samples: seeded by (seed, epoch) when shuffling, the same
// on every rank, then this rank's shard of it.
std::vector<int64_t> sample_order(size_t dataset_size, const LoaderOptions& options, uint64_t epoch);

struct Batch {
  std::vector<torch::Tensor> fields;  // each [n, ...], contiguous
  std::vector<int64_t> indices;       // dataset indices, in batch order
  std::vector<std::string> skipped;   // one message per sample dropped by skip_errors
};

// One pass over the data. The worker threads live exactly as long as this object (or until
// close()), so breaking out of a loop, an exception or garbage collection stops them. Any number
// of threads may call next() at once: each batch is handed out exactly once. A process forked
// from the one that created the epoch cannot use it (its worker threads did not survive the
// fork): next() there throws instead of waiting forever.
class LoaderEpoch {
 public:
  LoaderEpoch(SampleFn load, SampleNameFn sample_name, size_t dataset_size, LoaderOptions options, uint64_t epoch,
              BatchFn load_batch = nullptr);
  ~LoaderEpoch();
  LoaderEpoch(const LoaderEpoch&) = delete;
  LoaderEpoch& operator=(const LoaderEpoch&) = delete;

  // The next batch in order; nullopt after the last. A sample's error is re-thrown here, on the
  // batch that hit it, with its type; the epoch can go on after it. Throws if the epoch was
  // closed before its end, or in a forked child.
  std::optional<Batch> next();
  // Stops and joins the workers; idempotent.
  void close();
  size_t num_batches() const { return num_batches_; }

 private:
  struct Result {
    Batch batch;
    std::exception_ptr error;
  };
  void work();
  void check_same_process() const;
  Result load_batch(size_t b);
  Batch collate(std::vector<std::vector<torch::Tensor>>& samples, std::vector<int64_t> indices,
                std::vector<std::string> skipped) const;

  SampleFn load_;
  SampleNameFn sample_name_;
  BatchFn load_many_;
  LoaderOptions options_;
  uint64_t epoch_;
  std::vector<int64_t> order_;
  size_t num_batches_;
  size_t window_;
  // The process that started the workers; a forked child has another pid.
  const pid_t pid_;

  std::mutex mutex_;
  std::condition_variable ready_;  // a result arrived
  std::condition_variable room_;   // the consumer took one, or stop
  std::map<size_t, Result> results_;
  size_t next_to_load_ = 0;
  size_t next_to_hand_out_ = 0;
  bool stop_ = false;
  std::mutex close_mutex_;  // serialises close(): two threads must not join the same worker
  std::vector<std::thread> workers_;
};

class ThreadedLoader {
 public:
  ThreadedLoader(SampleFn load, SampleNameFn sample_name, size_t dataset_size, LoaderOptions options,
                 BatchFn load_batch = nullptr);
  size_t num_batches() const;
  size_t dataset_size() const { return dataset_size_; }
  // The samples this rank's epochs visit (dataset_size() unless sharded).
  size_t shard_size() const;
  std::unique_ptr<LoaderEpoch> epoch(uint64_t epoch) const;
  // The dataset indices of each batch of `epoch`, without loading anything (batches made of
  // skipped samples aside): what a training loop over cached features iterates.
  std::vector<std::vector<int64_t>> batch_indices(uint64_t epoch) const;
  const LoaderOptions& options() const { return options_; }
  // The dataset's description of sample `index` (its map file line, its files), for errors.
  std::string sample_name(size_t index) const { return sample_name_(index); }
  // The same loader with other options (e.g. sharded), sharing the dataset.
  ThreadedLoader with_options(LoaderOptions options) const;

 private:
  SampleFn load_;
  SampleNameFn sample_name_;
  BatchFn load_batch_;
  size_t dataset_size_;
  LoaderOptions options_;
};

}  // namespace torchtl::data
