"""Where torchtl's time goes on the fast path, and the most that cutting everything but the
convolutions could give.

For each workload this times torchvision's default execution (fp32, contiguous) and torchtl's fast
path on the same batch, then profiles torchtl's steps with torch.profiler. It prints the share of
the profiled time spent in convolution kernels (forward and backward), and the ceiling: the
speedup over torchvision's default that torchtl would reach if every other op took no time,
speedup / convolution share. Convolutions run oneDNN's kernels whichever path calls them (the
ones torch.compile's CPU freezing emits too), so what the fast path can still win is outside them.

Workloads (the shapes of benchmarks/models.py and benchmarks/train.py):
- inference: resnet50, batch 8, 224 px, eval under no_grad, fp32 and bf16 autocast;
- training step: resnet18, batch 16, 128 px, train mode, forward + backward on a fixed batch, fp32
  and bf16 autocast (the kernels of torchtl.engine.fit's step, without the loader and optimizer).

The models, steps and timing are benchmarks/models.py's (its --pass train is the training step).

    python benchmarks/time_shares.py [--repeats 10] [--device cpu]
"""
import argparse
import os
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

import torchtl
from models import build_pair, runner, time_once  # benchmarks/models.py: the same models, steps and timing

# (architecture, batch, size, train) of each workload.
WORKLOADS = (("resnet50", 8, 224, False), ("resnet18", 16, 128, True))


def is_convolution(op_name: str) -> bool:
    return "convolution" in op_name or "conv2d" in op_name


def convolution_share(run, repeats: int) -> float:
    """Share of the profiled self time (all threads' ops) spent in convolution ops."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            run()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if is_convolution(e.key)) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16_options = (False, True) if device.type == "cuda" or torchtl.cpu_supports_bf16() else (False,)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    print(f"{'workload':44s} {'torchtl speedup':>16s} {'in convolutions':>16s} {'ceiling':>8s}")
    for arch, batch, size, train in WORKLOADS:
        tv, tl = build_pair(arch)
        tv.to(device).train(train), tl.to(device).train(train)
        torch.manual_seed(0)
        x = torch.randn(batch, 3, size, size, device=device)
        baseline = runner(tv, x, train, device, False)
        for bf16 in bf16_options:
            fast = runner(tl, x, train, device, bf16)
            baseline(), fast()  # warm-up: oneDNN's weight reorders, the folded weights
            times = {baseline: [], fast: []}
            for _ in range(args.repeats):  # interleaved, so that machine noise hits both alike
                for run in times:
                    times[run].append(time_once(run, device))
            speedup = statistics.median(times[baseline]) / statistics.median(times[fast])
            share = convolution_share(fast, max(3, args.repeats // 2))
            name = f"{arch} b{batch} {size}px {'training step' if train else 'inference'}{' bf16' if bf16 else ''}"
            print(f"{name:44s} {speedup:15.2f}x {share:15.1%} {speedup / share:7.2f}x")
    print("speedup: over torchvision's default (fp32, contiguous) on the same batch; ceiling: speedup / share, "
          "the speedup if every op but the convolutions took no time")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} (other processes share these cores when > 1)")


if __name__ == "__main__":
    main()
