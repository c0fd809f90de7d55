// The threaded loader's threads as a C++ user meets them (data/loader.h).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "data/loader.h"
#include "harness.h"

namespace data = torchtl::data;

// A loader thread is one of the loader's parallel streams: its ATen ops run on that thread alone,
// as torch.utils.data's worker processes run theirs (torch.set_num_threads(1)), while the thread
// that consumes the batches keeps its intra-op threads. Also after the program set a thread count
// (torch.set_num_threads), which ATen applies to each thread at that thread's first parallel op.
TORCHTL_TEST(worker_threads_run_aten_ops_on_one_thread) {
  const int consumer_threads = std::max(at::get_num_threads(), 2);
  at::set_num_threads(consumer_threads);
  std::atomic<int> most{0};
  data::ThreadedLoader loader(
      [&](size_t index, uint64_t) {
        // A parallel op first: ATen's own per-thread set-up must not restore more threads.
        auto x = torch::rand({256, 256}).add_(1.0).sum();
        int now = at::get_num_threads();
        for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
        }
        return std::vector<torch::Tensor>{x.reshape({1}), torch::tensor(static_cast<int64_t>(index))};
      },
      [](size_t index) { return "sample " + std::to_string(index); }, 8, data::LoaderOptions().batch_size(2).num_workers(2));
  auto epoch = loader.epoch(0);
  int batches = 0;
  while (epoch->next()) ++batches;
  EXPECT(batches == 4);
  EXPECT(most.load() == 1) << "a loader thread ran ATen ops on " << most.load() << " threads";
  EXPECT(at::get_num_threads() == consumer_threads) << "the consumer's thread count changed";
}
