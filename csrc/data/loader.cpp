#include "data/loader.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <new>
#include <sstream>

#include <unistd.h>

#include "data/transforms.h"

// OpenMP's team size for the calling thread only. Weak, so a torch built without OpenMP (ATen's
// native thread pool) still loads this library; there the call is skipped.
extern "C" void omp_set_num_threads(int) __attribute__((weak));

namespace torchtl::data {
namespace {

// Each loader thread already is one of the parallel streams. ATen would otherwise open an
// OpenMP team of get_num_threads() inside every resize and conversion of every worker: N workers
// x M intra-op threads on M cores, which measured 50-100x slower per image here under load.
// (at::in_parallel_region() only consults omp_in_parallel(), so c10::ParallelGuard cannot do it.)
// ATen sets a thread's team size itself at the thread's first parallel op (its lazy
// init_num_threads), which would undo ours: at::get_num_threads() runs that first.
void serial_intra_op() {
  at::get_num_threads();
  if (omp_set_num_threads) omp_set_num_threads(1);
}

std::string message_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes() << " " << t.scalar_type();
  return out.str();
}

size_t count_batches(size_t n, const LoaderOptions& o) {
  const auto bs = static_cast<size_t>(o.batch_size());
  return o.drop_last() ? n / bs : (n + bs - 1) / bs;
}

size_t shard_length(size_t n, const LoaderOptions& o) {
  const auto replicas = static_cast<size_t>(o.num_replicas()), rank = static_cast<size_t>(o.rank());
  if (o.pad_shards()) return (n + replicas - 1) / replicas;
  return n > rank ? (n - rank + replicas - 1) / replicas : 0;
}

}  // namespace

std::vector<int64_t> sample_order(size_t dataset_size, const LoaderOptions& options, uint64_t epoch) {
  std::vector<int64_t> order;
  if (options.shuffle()) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(mix_seed(options.seed(), epoch, ~uint64_t{0}));
    auto perm = torch::randperm(static_cast<int64_t>(dataset_size), generator, torch::kInt64);
    order.assign(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + dataset_size);
  } else {
    order.resize(dataset_size);
    for (size_t i = 0; i < dataset_size; ++i) order[i] = static_cast<int64_t>(i);
  }
  if (options.num_replicas() == 1 || order.empty()) return order;
  const auto replicas = static_cast<size_t>(options.num_replicas());
  if (options.pad_shards()) {
    const size_t total = (dataset_size + replicas - 1) / replicas * replicas;
    for (size_t i = 0; order.size() < total; ++i) order.push_back(order[i]);
  }
  std::vector<int64_t> shard;
  for (size_t i = static_cast<size_t>(options.rank()); i < order.size(); i += replicas) shard.push_back(order[i]);
  return shard;
}

LoaderEpoch::LoaderEpoch(SampleFn load, SampleNameFn sample_name, size_t dataset_size, LoaderOptions options, uint64_t epoch,
                         BatchFn load_batch)
    : load_(std::move(load)),
      sample_name_(std::move(sample_name)),
      load_many_(std::move(load_batch)),
      options_(std::move(options)),
      epoch_(epoch),
      num_batches_(count_batches(shard_length(dataset_size, options_), options_)),
      window_(static_cast<size_t>(std::max<int64_t>(options_.num_workers(), 1) * options_.prefetch_factor())),
      pid_(::getpid()) {
  order_ = sample_order(dataset_size, options_, epoch_);
  try {
    for (int64_t i = 0; i < options_.num_workers(); ++i) workers_.emplace_back([this] { work(); });
  } catch (const std::exception& e) {
    // The threads already started must be joined before they are destroyed (else std::terminate).
    const auto started = workers_.size();
    close();
    TORCH_CHECK(false, "could not start loader thread ", started + 1, " of num_workers=", options_.num_workers(), " (",
                e.what(), "); use fewer workers");
  }
}

LoaderEpoch::~LoaderEpoch() { close(); }

void LoaderEpoch::check_same_process() const {
  TORCH_CHECK(options_.num_workers() == 0 || ::getpid() == pid_,
              "a loader iterator cannot be used in a forked child process: its worker threads stay in the parent; "
              "create a new iterator (iter(loader)) in the child");
}

void LoaderEpoch::close() {
  std::lock_guard<std::mutex> closing(close_mutex_);
  if (::getpid() != pid_ && options_.num_workers() > 0) {
    // In a forked child the workers do not exist: joining would wait forever. The copied mutex
    // and condition variables still count them (one may hold mutex_; notifying or destroying a
    // condition variable they waited on blocks for good), so they start afresh here, as
    // pthread_atfork child handlers re-initialise their locks.
    // The std::thread objects are forgotten, not detached: detaching touches the pthread state of
    // threads that are gone (ESRCH, thrown from the destructor, std::terminate).
    for (auto& worker : workers_) new (&worker) std::thread();
    workers_.clear();
    new (&mutex_) std::mutex();
    new (&ready_) std::condition_variable();
    new (&room_) std::condition_variable();
    stop_ = true;
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  room_.notify_all();
  ready_.notify_all();
  for (auto& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
  workers_.clear();
}

void LoaderEpoch::work() {
  serial_intra_op();
  while (true) {
    size_t b;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      room_.wait(lock, [&] {
        return stop_ || next_to_load_ >= num_batches_ || next_to_load_ < next_to_hand_out_ + window_;
      });
      if (stop_ || next_to_load_ >= num_batches_) return;
      b = next_to_load_++;
    }
    Result result = load_batch(b);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      results_.emplace(b, std::move(result));
    }
    ready_.notify_all();
  }
}

LoaderEpoch::Result LoaderEpoch::load_batch(size_t b) {
  Result result;
  const size_t bs = static_cast<size_t>(options_.batch_size());
  const size_t begin = b * bs, end = std::min(begin + bs, order_.size());
  std::vector<std::vector<torch::Tensor>> samples;
  std::vector<int64_t> indices;
  std::vector<std::string> skipped;
  samples.reserve(end - begin);
  if (load_many_) {
    std::vector<size_t> batch(order_.begin() + static_cast<std::ptrdiff_t>(begin),
                              order_.begin() + static_cast<std::ptrdiff_t>(end));
    try {
      samples = load_many_(batch, epoch_);
      indices.assign(batch.begin(), batch.end());
    } catch (...) {
      if (!options_.skip_errors()) {
        result.error = std::current_exception();
        return result;
      }
      // One sample a call, so that only the samples that fail are left out.
      for (const auto index : batch) {
        try {
          samples.push_back(std::move(load_many_({index}, epoch_).at(0)));
          indices.push_back(static_cast<int64_t>(index));
        } catch (...) {
          skipped.push_back(message_of(std::current_exception()));
        }
      }
    }
  } else {
    for (size_t k = begin; k < end; ++k) {
      if (options_.num_workers() > 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stop_) return result;
      }
      const auto index = static_cast<size_t>(order_[k]);
      try {
        samples.push_back(load_(index, epoch_));
        indices.push_back(static_cast<int64_t>(index));
      } catch (...) {
        if (!options_.skip_errors()) {
          result.error = std::current_exception();
          return result;
        }
        skipped.push_back(message_of(std::current_exception()));
      }
    }
  }
  try {
    result.batch = collate(samples, std::move(indices), std::move(skipped));
  } catch (...) {
    result.error = std::current_exception();
  }
  return result;
}

Batch LoaderEpoch::collate(std::vector<std::vector<torch::Tensor>>& samples, std::vector<int64_t> indices,
                           std::vector<std::string> skipped) const {
  Batch batch;
  batch.indices = std::move(indices);
  batch.skipped = std::move(skipped);
  if (samples.empty()) return batch;
  const size_t fields = samples[0].size();
  for (size_t f = 0; f < fields; ++f) {
    const auto& first = samples[0][f];
    for (size_t s = 1; s < samples.size(); ++s) {
      TORCH_CHECK_VALUE(samples[s].size() == fields, sample_name_(batch.indices[s]), " gives ", samples[s].size(),
                        " fields but ", sample_name_(batch.indices[0]), " gives ", fields);
      const auto& other = samples[s][f];
      TORCH_CHECK_VALUE(other.sizes() == first.sizes() && other.scalar_type() == first.scalar_type(),
                        "cannot batch samples of different shapes: ", sample_name_(batch.indices[0]), " is ",
                        shape_of(first), " but ", sample_name_(batch.indices[s]), " is ", shape_of(other),
                        "; use a transform with a fixed output size, or batch_size=1");
    }
    std::vector<int64_t> shape{static_cast<int64_t>(samples.size())};
    shape.insert(shape.end(), first.sizes().begin(), first.sizes().end());
    // On the samples' device: the CPU, or the decode_device.
    auto out = torch::empty(shape, torch::TensorOptions()
                                       .dtype(first.scalar_type())
                                       .device(first.device())
                                       .pinned_memory(options_.pin_memory() && first.is_cpu()));
    for (size_t s = 0; s < samples.size(); ++s) out[static_cast<int64_t>(s)].copy_(samples[s][f]);
    batch.fields.push_back(std::move(out));
  }
  return batch;
}

std::optional<Batch> LoaderEpoch::next() {
  check_same_process();
  // Messages of skipped samples whose whole batch was skipped ride on the next batch handed out.
  std::vector<std::string> carried;
  auto end_of_epoch = [&]() -> std::optional<Batch> {
    if (carried.empty()) return std::nullopt;
    return Batch{{}, {}, std::move(carried)};
  };
  while (true) {
    Result result;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // Exhaustion first: a thread that finds the epoch ended (and closed) by another one sharing
      // the iterator gets the end, not an error.
      if (next_to_hand_out_ >= num_batches_) return end_of_epoch();
      TORCH_CHECK(!stop_, "this loader epoch was closed");
      if (options_.num_workers() == 0) {
        // Claimed before loading, so threads sharing this epoch never load the same batch.
        const size_t b = next_to_hand_out_++;
        lock.unlock();
        result = load_batch(b);
      } else {
        ready_.wait(lock, [&] {
          return stop_ || next_to_hand_out_ >= num_batches_ || results_.count(next_to_hand_out_) > 0;
        });
        if (next_to_hand_out_ >= num_batches_) return end_of_epoch();
        TORCH_CHECK(!stop_, "this loader epoch was closed");
        auto it = results_.find(next_to_hand_out_);
        result = std::move(it->second);
        results_.erase(it);
        ++next_to_hand_out_;
      }
    }
    room_.notify_all();
    // Other threads sharing this epoch may wait for the batch just taken: they now want the next.
    ready_.notify_all();
    if (result.error) std::rethrow_exception(result.error);
    if (result.batch.fields.empty()) {
      carried.insert(carried.end(), result.batch.skipped.begin(), result.batch.skipped.end());
      continue;
    }
    result.batch.skipped.insert(result.batch.skipped.begin(), carried.begin(), carried.end());
    return std::move(result.batch);
  }
}

ThreadedLoader::ThreadedLoader(SampleFn load, SampleNameFn sample_name, size_t dataset_size, LoaderOptions options,
                               BatchFn load_batch)
    : load_(std::move(load)),
      sample_name_(std::move(sample_name)),
      load_batch_(std::move(load_batch)),
      dataset_size_(dataset_size),
      options_(std::move(options)) {
  TORCH_CHECK_VALUE(options_.batch_size() > 0, "batch_size must be positive, got ", options_.batch_size());
  TORCH_CHECK_VALUE(options_.num_workers() >= 0 && options_.num_workers() <= kMaxLoaderWorkers,
                    "num_workers must be between 0 and ", kMaxLoaderWorkers, ", got ", options_.num_workers());
  TORCH_CHECK_VALUE(options_.prefetch_factor() > 0, "prefetch_factor must be positive, got ",
                    options_.prefetch_factor());
  TORCH_CHECK_VALUE(options_.num_replicas() > 0, "num_replicas must be positive, got ", options_.num_replicas());
  TORCH_CHECK_VALUE(options_.rank() >= 0 && options_.rank() < options_.num_replicas(), "rank must be in [0, ",
                    options_.num_replicas(), "), got ", options_.rank());
  TORCH_CHECK_VALUE(!options_.decode_device() || load_batch_, "decode_device needs a dataset that decodes a batch on a ",
                    "device (make_loader over a MapDataset)");
  TORCH_CHECK_VALUE(!(options_.pin_memory() && options_.decode_device() && !options_.decode_device()->is_cpu()),
                    "pin_memory pins CPU batches for their copy to the GPU, but with decode_device=",
                    *options_.decode_device(), " the batches are made there; drop one of them");
}

size_t ThreadedLoader::shard_size() const { return shard_length(dataset_size_, options_); }

size_t ThreadedLoader::num_batches() const { return count_batches(shard_size(), options_); }

ThreadedLoader ThreadedLoader::with_options(LoaderOptions options) const {
  return ThreadedLoader(load_, sample_name_, dataset_size_, std::move(options), load_batch_);
}

std::vector<std::vector<int64_t>> ThreadedLoader::batch_indices(uint64_t epoch) const {
  const auto order = sample_order(dataset_size_, options_, epoch);
  const auto bs = static_cast<size_t>(options_.batch_size());
  std::vector<std::vector<int64_t>> batches;
  for (size_t b = 0; b < num_batches(); ++b) {
    const size_t begin = b * bs, end = std::min(order.size(), begin + bs);
    batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(begin), order.begin() + static_cast<std::ptrdiff_t>(end));
  }
  return batches;
}

std::unique_ptr<LoaderEpoch> ThreadedLoader::epoch(uint64_t epoch) const {
  return std::make_unique<LoaderEpoch>(load_, sample_name_, dataset_size_, options_, epoch, load_batch_);
}

}  // namespace torchtl::data
