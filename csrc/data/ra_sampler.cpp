#include "data/ra_sampler.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>

namespace torchtl::data {
namespace {

void ra_check(int64_t dataset_size, const RASamplerOptions& o) {
  TORCH_CHECK_VALUE(dataset_size >= 0, "RASampler: dataset size must be >= 0, got ", dataset_size);
  TORCH_CHECK_VALUE(o.num_replicas > 0, "RASampler: num_replicas must be positive, got ", o.num_replicas);
  TORCH_CHECK_VALUE(o.rank >= 0 && o.rank < o.num_replicas, "RASampler: rank ", o.rank, " is not in [0, ",
                    o.num_replicas, ")");
  TORCH_CHECK_VALUE(o.repetitions > 0, "RASampler: repetitions must be positive, got ", o.repetitions);
}

}  // namespace

int64_t ra_sampler_length(int64_t dataset_size, const RASamplerOptions& o) {
  ra_check(dataset_size, o);
  return static_cast<int64_t>(
      std::floor(static_cast<double>(dataset_size / 256 * 256) / static_cast<double>(o.num_replicas)));
}

std::vector<int64_t> ra_sampler_indices(int64_t dataset_size, int64_t epoch, const RASamplerOptions& o) {
  ra_check(dataset_size, o);
  const auto num_samples = static_cast<int64_t>(std::ceil(static_cast<double>(dataset_size) *
                                                          static_cast<double>(o.repetitions) /
                                                          static_cast<double>(o.num_replicas)));
  const int64_t total_size = num_samples * o.num_replicas;
  std::vector<int64_t> order(static_cast<size_t>(dataset_size));
  if (o.shuffle) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(o.seed + static_cast<uint64_t>(epoch));
    const auto perm = torch::randperm(dataset_size, generator, torch::kLong);
    const auto* p = perm.data_ptr<int64_t>();
    for (int64_t i = 0; i < dataset_size; ++i) order[static_cast<size_t>(i)] = p[i];
  } else {
    for (int64_t i = 0; i < dataset_size; ++i) order[static_cast<size_t>(i)] = i;
  }
  std::vector<int64_t> repeated;
  repeated.reserve(static_cast<size_t>(std::max(total_size, dataset_size * o.repetitions)));
  for (const auto index : order) {
    for (int64_t r = 0; r < o.repetitions; ++r) repeated.push_back(index);
  }
  // Python's indices += indices[:total_size - len(indices)]: a negative bound cuts from the end.
  const auto length = static_cast<int64_t>(repeated.size());
  int64_t extra = total_size - length;
  extra = extra < 0 ? std::max<int64_t>(length + extra, 0) : std::min(extra, length);
  for (int64_t i = 0; i < extra; ++i) repeated.push_back(repeated[static_cast<size_t>(i)]);
  TORCH_CHECK(static_cast<int64_t>(repeated.size()) == total_size, "RASampler: ", repeated.size(),
              " indices for a total size of ", total_size);
  const int64_t selected = ra_sampler_length(dataset_size, o);
  std::vector<int64_t> out;
  for (int64_t i = o.rank; i < total_size && static_cast<int64_t>(out.size()) < selected; i += o.num_replicas) {
    out.push_back(repeated[static_cast<size_t>(i)]);
  }
  return out;
}

}  // namespace torchtl::data
