#include "engine/distributed.h"

#include <map>
#include <utility>

namespace torchtl::engine {
namespace {

// Tensors split into flat buckets of one dtype and device each, at most `cap` bytes (a larger
// tensor gets a bucket of its own), so one collective moves many small tensors.
std::vector<std::vector<torch::Tensor>> buckets_of(const std::vector<torch::Tensor>& tensors, int64_t cap) {
  std::map<std::pair<c10::ScalarType, std::string>, std::vector<std::vector<torch::Tensor>>> by_kind;
  std::map<std::pair<c10::ScalarType, std::string>, int64_t> filled;
  for (const auto& t : tensors) {
    const auto key = std::make_pair(t.scalar_type(), t.device().str());
    auto& list = by_kind[key];
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (list.empty() || filled[key] + bytes > cap) {
      list.emplace_back();
      filled[key] = 0;
    }
    list.back().push_back(t);
    filled[key] += bytes;
  }
  std::vector<std::vector<torch::Tensor>> out;
  for (auto& kind : by_kind) {
    for (auto& bucket : kind.second) out.push_back(std::move(bucket));
  }
  return out;
}

torch::Tensor flatten(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> flat;
  flat.reserve(tensors.size());
  for (const auto& t : tensors) flat.push_back(t.reshape({-1}));
  return torch::cat(flat);
}

void unflatten_into(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors) {
  int64_t offset = 0;
  for (const auto& t : tensors) {
    t.copy_(flat.slice(0, offset, offset + t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

}  // namespace

Distributed::Distributed(c10::intrusive_ptr<c10d::ProcessGroup> group, torch::Device device)
    : group_(std::move(group)), device_(device) {
  if (group_) {
    rank_ = group_->getRank();
    world_size_ = group_->getSize();
  }
}

data::ThreadedLoader Distributed::shard(const data::ThreadedLoader& loader, bool pad) const {
  const auto& o = loader.options();
  if (o.num_replicas() != 1) {
    TORCH_CHECK_VALUE(o.num_replicas() == world_size_ && o.rank() == rank_, "the loader is sharded as rank ", o.rank(),
                      " of ", o.num_replicas(), ", but this process is rank ", rank_, " of ", world_size_,
                      " in the process group");
    return loader;
  }
  if (!enabled()) return loader;
  auto sharded = o;
  sharded.num_replicas(world_size_).rank(rank_).pad_shards(pad);
  return loader.with_options(sharded);
}

void Distributed::broadcast(const std::vector<torch::Tensor>& tensors) const {
  if (!enabled() || tensors.empty()) return;
  torch::NoGradGuard no_grad;
  for (const auto& bucket : buckets_of(tensors, kBucketBytes)) {
    std::vector<torch::Tensor> flat{flatten(bucket)};
    c10d::BroadcastOptions options;
    options.rootRank = 0;
    group_->broadcast(flat, options)->wait();
    unflatten_into(flat[0], bucket);
  }
}

void Distributed::all_reduce_gradients(const std::vector<torch::Tensor>& params) const {
  if (!enabled()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  grads.reserve(params.size());
  for (const auto& p : params) {
    // A parameter this rank's batch did not reach still takes part (with zeros), so every rank
    // builds the same buckets and the collectives line up.
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  auto buckets = buckets_of(grads, kBucketBytes);
  std::vector<std::vector<torch::Tensor>> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (const auto& bucket : buckets) {
    flats.push_back({flatten(bucket)});
    works.push_back(group_->allreduce(flats.back()));
  }
  for (size_t b = 0; b < buckets.size(); ++b) {
    works[b]->wait();
    flats[b][0].div_(static_cast<double>(world_size_));
    unflatten_into(flats[b][0], buckets[b]);
  }
}

void Distributed::all_reduce_sum(torch::Tensor& tensor) const {
  if (!enabled()) return;
  std::vector<torch::Tensor> list{tensor.to(device_)};
  group_->allreduce(list)->wait();
  tensor.copy_(list[0]);
}

std::vector<double> Distributed::all_reduce_sum(std::vector<double> values) const {
  if (!enabled() || values.empty()) return values;
  auto t = torch::tensor(values, torch::kFloat64);
  all_reduce_sum(t);
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

std::vector<double> Distributed::all_reduce_mean(std::vector<double> values) const {
  auto sums = all_reduce_sum(std::move(values));
  if (enabled()) {
    for (auto& v : sums) v /= static_cast<double>(world_size_);
  }
  return sums;
}

int64_t Distributed::all_reduce_max(int64_t value) const {
  if (!enabled()) return value;
  std::vector<torch::Tensor> list{torch::full({1}, value, torch::TensorOptions().dtype(torch::kInt64).device(device_))};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::MAX;
  group_->allreduce(list, options)->wait();
  return list[0].item<int64_t>();
}

bool Distributed::any(bool flag) const { return all_reduce_max(flag ? 1 : 0) != 0; }

void Distributed::barrier() const {
  if (enabled()) group_->barrier()->wait();
}

}  // namespace torchtl::engine
