#pragma once
// Data-parallel training over a c10d process group (torch.distributed's engine), as
// DistributedDataParallel does it: parameters and buffers start from rank 0, every rank trains on
// its own shard of the data, and gradients are averaged with all-reduce after backward, so N ranks
// with batch B take the steps one process takes with batch N*B. The group is the one Python made
// (torch.distributed.init_process_group under torchrun); without one everything here is a no-op.
#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <cstdint>
#include <vector>

#include "data/loader.h"

namespace torchtl::engine {

class Distributed {
 public:
  // One process: rank 0 of 1.
  Distributed() = default;
  // `group` may be null (one process). `device` is where the collectives run (nccl reduces CUDA
  // tensors only); values on other devices are copied there and back.
  Distributed(c10::intrusive_ptr<c10d::ProcessGroup> group, torch::Device device);

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  bool enabled() const { return world_size_ > 1; }
  // Only this rank writes checkpoints and logs and shows progress.
  bool is_main_process() const { return rank_ == 0; }

  // This rank's part of `loader`, DistributedSampler's way: the epoch's order (the same on every
  // rank), padded by repeating its start when `pad` so every rank gets as many samples, then every
  // world_size-th sample from `rank`. A loader the user already sharded must match this group.
  data::ThreadedLoader shard(const data::ThreadedLoader& loader, bool pad) const;

  // Copies rank 0's values into every rank's tensors (DDP's start and its buffer broadcast).
  void broadcast(const std::vector<torch::Tensor>& tensors) const;
  // Replaces each parameter's gradient by its mean over the ranks, in flattened buckets of at most
  // kBucketBytes (one all-reduce each, all in flight at once) rather than one call per tensor.
  void all_reduce_gradients(const std::vector<torch::Tensor>& params) const;
  // Sums `tensor` over the ranks, in place.
  void all_reduce_sum(torch::Tensor& tensor) const;
  std::vector<double> all_reduce_sum(std::vector<double> values) const;
  // The mean over the ranks of each value (every rank passes as many).
  std::vector<double> all_reduce_mean(std::vector<double> values) const;
  // Maximum of `value` over the ranks.
  int64_t all_reduce_max(int64_t value) const;
  // True on every rank when `flag` is true on any rank: ranks stop together, or they would wait for
  // each other forever in the next all-reduce.
  bool any(bool flag) const;
  void barrier() const;

  // DDP's bucket size (bucket_cap_mb=25).
  static constexpr int64_t kBucketBytes = 25 * 1024 * 1024;

 private:
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  torch::Device device_ = torch::kCPU;
  int64_t rank_ = 0;
  int64_t world_size_ = 1;
};

}  // namespace torchtl::engine
