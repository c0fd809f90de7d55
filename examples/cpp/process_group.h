#pragma once
// Data-parallel runs of the training programs under torchrun, which starts one process per rank and
// tells each its place through the environment that torch.distributed's env:// initialisation reads
// (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, and LOCAL_RANK for the GPU). From it each
// process joins a c10d process group (a TCPStore for the rendezvous, gloo on the CPU, NCCL on CUDA)
// that fit() and evaluate() take as FitOptions::process_group (engine/distributed.h):
//
//   torchrun --nproc_per_node 2 --no-python transfer_learning --train ... --device cpu
//   torchrun --nproc_per_node 2 --no-python transfer_learning --train ... --device cuda  # one GPU a rank
//
// NCCL is compiled in where CMake finds nccl.h and a CUDA toolkit's headers (TORCHTL_WITH_NCCL).
// Without WORLD_SIZE in the environment a program runs in one process.
#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef TORCHTL_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <optional>
#include <streambuf>
#include <string>

#include "cli.h"

namespace torchtl::examples {

// This process's place in a launch, as torchrun describes it.
struct LaunchEnvironment {
  int64_t rank = 0;
  int64_t world_size = 1;
  std::string master_addr;
  uint16_t master_port = 0;
  // The rank's index on its machine: the GPU it takes when told --device cuda.
  int64_t local_rank = 0;
  // torchrun's agent already serves the store at MASTER_ADDR:MASTER_PORT, so every rank is a client
  // (TORCHELASTIC_USE_AGENT_STORE=True); otherwise rank 0 serves it.
  bool agent_store = false;
};

namespace detail {

inline std::string required_env(const char* name) {
  const char* value = std::getenv(name);
  TORCH_CHECK_VALUE(value != nullptr && *value != '\0', "WORLD_SIZE is set, so this is one process of a data-parallel ",
                    "launch (torchrun), but the environment variable ", name, " is not set");
  return value;
}

inline int64_t env_integer(const char* name, const std::string& text, int64_t minimum, int64_t maximum) {
  const auto value = whole_integer(text);
  TORCH_CHECK_VALUE(value && *value >= minimum && *value <= maximum, "the environment variable ", name,
                    " must be an integer in [", minimum, ", ", maximum, "], got '", text, "'");
  return *value;
}

// Swallows what is written to it.
class NullBuffer : public std::streambuf {
 protected:
  int overflow(int c) override { return traits_type::not_eof(c); }
};

}  // namespace detail

// The launch this process belongs to; nullopt when WORLD_SIZE is not set (one process). A variable
// that is missing or malformed is an error that names it.
inline std::optional<LaunchEnvironment> launch_environment() {
  const char* world_size = std::getenv("WORLD_SIZE");
  if (world_size == nullptr) return std::nullopt;
  LaunchEnvironment env;
  env.world_size = detail::env_integer("WORLD_SIZE", world_size, 1, std::numeric_limits<int>::max());
  env.rank = detail::env_integer("RANK", detail::required_env("RANK"), 0, env.world_size - 1);
  env.master_addr = detail::required_env("MASTER_ADDR");
  env.master_port = static_cast<uint16_t>(
      detail::env_integer("MASTER_PORT", detail::required_env("MASTER_PORT"), 1, std::numeric_limits<uint16_t>::max()));
  if (const char* local_rank = std::getenv("LOCAL_RANK")) {
    env.local_rank = detail::env_integer("LOCAL_RANK", local_rank, 0, env.world_size - 1);
  }
  const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  env.agent_store = agent_store != nullptr && std::string(agent_store) == "True";
  return env;
}

// Joins the launch's process group, as torch.distributed.init_process_group does from the same
// environment: every rank meets at the TCPStore on MASTER_ADDR:MASTER_PORT, then reduces with gloo
// on the CPU or NCCL on CUDA. Blocks until all WORLD_SIZE ranks have joined.
inline c10::intrusive_ptr<c10d::ProcessGroup> init_process_group(const LaunchEnvironment& env,
                                                                const torch::Device& device) {
#ifndef TORCHTL_WITH_NCCL
  TORCH_CHECK_VALUE(!device.is_cuda(), "data-parallel training on ", device, " needs NCCL (c10d::ProcessGroupNCCL), ",
                    "which this program is built without: CMake found no nccl.h or no CUDA toolkit headers ",
                    "(TORCHTL_WITH_NCCL; set CUDA_HOME to a CUDA toolkit). Train data-parallel on the CPU ",
                    "(--device cpu), or on CUDA with `torchrun -m torchtl train`, whose Python group uses NCCL");
#endif
  const auto rank = static_cast<int>(env.rank);
  const auto size = static_cast<int>(env.world_size);
  c10d::TCPStoreOptions store_options;
  store_options.port = env.master_port;
  store_options.isServer = env.rank == 0 && !env.agent_store;
  store_options.numWorkers = static_cast<size_t>(size);
  store_options.multiTenant = true;
  // Apart from the keys of torchrun's agent, which may share the store.
  const auto store = c10::make_intrusive<c10d::PrefixStore>(
      "torchtl/", c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options));

  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, size);
#ifdef TORCHTL_WITH_NCCL
  if (device.is_cuda()) {
    // NCCL reduces on the rank's current CUDA device: the one this rank trains on.
    c10::cuda::set_device(device.index());
    auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, c10d::ProcessGroupNCCL::Options::create());
    group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
    return group;
  }
#endif
  // GLOO_SOCKET_IFNAME, as for torch.distributed, picks the network interfaces.
  auto gloo =
      c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, c10d::ProcessGroupGloo::Options::create_default());
  group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
  group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  return group;
}

// What a training program takes from its launch: the process group (null in one process), its
// rank, and the device it trains on.
struct Launch {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  int64_t rank = 0;
  torch::Device device = torch::kCPU;
};

// One process without WORLD_SIZE (or with WORLD_SIZE=1); else this rank's group, reducing on
// `device`, where `cuda` without an index becomes cuda:LOCAL_RANK (each rank its own GPU), as the
// torchtl command does.
inline Launch join_launch(const torch::Device& device) {
  const auto env = launch_environment();
  if (!env || env->world_size == 1) return {nullptr, 0, device};
  const auto rank_device =
      device.is_cuda() && !device.has_index() ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env->local_rank))
                                              : device;
  return {init_process_group(*env, rank_device), env->rank, rank_device};
}

// How many processes train, for a program's report: empty in one process.
inline std::string processes(const Launch& launch) {
  if (!launch.group) return "";
  return " in each of " + std::to_string(launch.group->getSize()) + " processes (data-parallel)";
}

// While alive on a rank other than 0, what the program writes to std::cout goes nowhere: rank 0
// alone reports the run, as it alone writes the checkpoints. Errors (std::cerr) still show on every rank.
class OutputOfRankZero {
 public:
  explicit OutputOfRankZero(int64_t rank) : saved_(rank == 0 ? nullptr : std::cout.rdbuf(&null_)) {}
  ~OutputOfRankZero() {
    if (saved_) std::cout.rdbuf(saved_);
  }
  OutputOfRankZero(const OutputOfRankZero&) = delete;
  OutputOfRankZero& operator=(const OutputOfRankZero&) = delete;

 private:
  detail::NullBuffer null_;
  std::streambuf* saved_;
};

}  // namespace torchtl::examples
