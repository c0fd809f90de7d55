#pragma once
// torchvision references/classification/sampler.py RASampler (repeated augmentation, from DeiT):
// each sample repeated `repetitions` times in a row, the list padded to divide evenly and dealt
// out to the replicas (rank::num_replicas), then cut to len(dataset) // 256 * 256 / num_replicas
// samples per replica, exactly as the references do (a dataset under 256 samples yields none).
#include <cstdint>
#include <vector>

namespace torchtl::data {

struct RASamplerOptions {
  int64_t num_replicas = 1;
  int64_t rank = 0;
  bool shuffle = true;
  uint64_t seed = 0;
  int64_t repetitions = 3;
};

// The indices RASampler yields in `epoch` (set_epoch): a torch.randperm drawn from a generator
// seeded seed + epoch when shuffling.
std::vector<int64_t> ra_sampler_indices(int64_t dataset_size, int64_t epoch, const RASamplerOptions& options);
// len(RASampler): int(floor(len(dataset) // 256 * 256 / num_replicas)).
int64_t ra_sampler_length(int64_t dataset_size, const RASamplerOptions& options);

}  // namespace torchtl::data
