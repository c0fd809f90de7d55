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
- training step: resnet18, batch 16, 128 px, forward + backward + SGD step on a fixed batch, fp32
  and bf16 autocast (torchtl.engine.fit's step on the same kernels, without the loader).

    python benchmarks/time_shares.py [--repeats 10] [--device cpu]
"""
import argparse
import os
import statistics
import time

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

import torchtl


def is_convolution(op_name: str) -> bool:
    return "convolution" in op_name or "conv2d" in op_name


def inference_step(model, x, bf16):
    def step():
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)
    return step


def training_step(model, x, y, bf16):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return step


def median_seconds(step, repeats: int, device) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def convolution_share(step, repeats: int) -> float:
    """Share of the profiled self time (all threads' ops) spent in convolution ops."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if is_convolution(e.key)) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16_ok = device.type == "cuda" or torchtl.cpu_supports_bf16()
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")

    torch.manual_seed(0)
    workloads = []
    tv = torchvision.models.resnet50().eval().to(device)
    ours = torchtl.models.resnet50(weights=tv).eval().to(device)
    x = torch.randn(8, 3, 224, 224, device=device)
    for bf16 in (False, True) if bf16_ok else (False,):
        workloads.append((f"inference resnet50 b8 224px{' bf16' if bf16 else ''}",
                          inference_step(tv, x, False), inference_step(ours, x, bf16)))
    x = torch.randn(16, 3, 128, 128, device=device)
    y = torch.randint(0, 10, (16,), device=device)
    for bf16 in (False, True) if bf16_ok else (False,):
        tv = torchvision.models.resnet18(num_classes=10).to(device)
        ours = torchtl.models.resnet18(weights=tv, num_classes=10).to(device)
        workloads.append((f"training step resnet18 b16 128px{' bf16' if bf16 else ''}",
                          training_step(tv, x, y, False), training_step(ours, x, y, bf16)))

    print(f"{'workload':40s} {'torchtl speedup':>16s} {'in convolutions':>16s} {'ceiling':>8s}")
    for name, baseline, fast in workloads:
        speedup = median_seconds(baseline, args.repeats, device) / median_seconds(fast, args.repeats, device)
        share = convolution_share(fast, max(3, args.repeats // 2))
        print(f"{name:40s} {speedup:15.2f}x {share:15.1%} {speedup / share:7.2f}x")
    print("speedup: over torchvision's default (fp32, contiguous) on the same batch; ceiling: speedup / share, "
          "the speedup if every op but the convolutions took no time")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} (other processes share these cores when > 1)")


if __name__ == "__main__":
    main()
