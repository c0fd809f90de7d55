"""Data-parallel training with 1 and 2 ranks (torchrun, gloo, CPU): the C++ loop (torchtl.engine.fit)
and its Python twin (torchtl.reference.fit, DistributedDataParallel), same data, same weights.

Prints images/s of a resnet18 finetune epoch per setting (the whole run's images over the wall
time of the second of two epochs, when thread pools, oneDNN's kernels and the loader are warm), the
2-rank / 1-rank ratio and C++ / Python, then what a step's gradient all-reduce costs next to the
step itself, bucketed (one flat tensor per 25 MiB, as torchtl and DDP do) and one call per tensor,
which is what says whether overlapping it with backward could pay.

On a 2-core machine two ranks share the cores one rank already uses, so the 2-rank figures are a
correctness run, not a scaling measurement: each rank gets half the cores.

    python benchmarks/distributed.py                # 1 and 2 ranks, both engines
    python benchmarks/distributed.py --images 128 --batch-size 8 --size 96
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args):
    """One rank (under torchrun): a finetune epoch, then the all-reduce timings; rank 0 writes json."""
    import torch.distributed as dist

    import torchtl
    from train import loader, make_set

    map_path = make_set(f"dist_{args.size}", args.images, args.size)
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=2)
    engine = torchtl.engine if args.engine == "torchtl" else torchtl.reference
    # Also with 1 rank, so both settings run the same code; fit joins the group (one rank: no collectives).
    dist.init_process_group("gloo")
    history = engine.fit(model, loader(map_path, args.batch_size, args.size), epochs=2, mode="finetune",
                         optimizer="sgd", lr=0.01, device="cpu", progress=False)
    epoch = history["epochs"][-1]
    result = {"images": epoch["images"], "seconds": epoch["seconds"], "images_per_second": epoch["images_per_second"],
              "step_seconds": epoch["seconds"] / len(epoch["step_losses"])}
    if dist.get_world_size() > 1:
        grads = [torch.randn_like(p) for p in model.parameters()]
        result["allreduce_bucketed"] = time_allreduce(grads, bucketed=True)
        result["allreduce_per_tensor"] = time_allreduce(grads, bucketed=False)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)


def time_allreduce(grads, bucketed, repeats=5):
    import torch.distributed as dist

    cap = 25 * 1024 * 1024
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        if bucketed:
            buckets, size = [[]], 0
            for g in grads:
                if buckets[-1] and size + g.numel() * g.element_size() > cap:
                    buckets.append([])
                    size = 0
                buckets[-1].append(g)
                size += g.numel() * g.element_size()
            works = [(b, torch.cat([g.flatten() for g in b])) for b in buckets]
            handles = [dist.all_reduce(flat, async_op=True) for _, flat in works]
            for h, (b, flat) in zip(handles, works):
                h.wait()
                for g, value in zip(b, torch._utils._unflatten_dense_tensors(flat, b)):
                    g.copy_(value)
        else:
            for h in [dist.all_reduce(g, async_op=True) for g in grads]:
                h.wait()
        times.append(time.perf_counter() - start)
    return min(times)


def launch(args, engine, nproc):
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), os.path.abspath(__file__), "--worker",
           "--engine", engine, "--out", out, "--images", str(args.images), "--batch-size", str(args.batch_size),
           "--size", str(args.size)]
    subprocess.run(cmd, check=True, timeout=1800, env=dict(os.environ, OMP_NUM_THREADS=str(max(1, args.threads // nproc))))
    with open(out) as f:
        result = json.load(f)
    os.unlink(out)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8, help="per rank")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads shared by the ranks")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", default="torchtl", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from train import make_set

    make_set(f"dist_{args.size}", args.images, args.size)  # before the ranks start, which only read it
    print(f"resnet18 finetune, {args.images} images of {args.size} px, batch {args.batch_size} per rank, "
          f"{os.cpu_count()} cores shared by the ranks")
    if os.cpu_count() < 4:
        print("with fewer than 2 cores per rank the 2-rank figures show that data-parallel training runs and "
              "what it costs, not how it scales")
    results = {(e, n): launch(args, e, n) for n in (1, 2) for e in ("torchtl", "reference")}
    for n in (1, 2):
        cpp, py = results[("torchtl", n)], results[("reference", n)]
        print(f"{n} rank{'s' if n > 1 else ' '}: C++ {cpp['images_per_second']:7.1f} img/s, Python DDP "
              f"{py['images_per_second']:7.1f} img/s, C++ / Python {cpp['images_per_second'] / py['images_per_second']:.2f}")
    for e in ("torchtl", "reference"):
        ratio = results[(e, 2)]["images_per_second"] / results[(e, 1)]["images_per_second"]
        print(f"{e}: 2 ranks / 1 rank images/s {ratio:.2f}")
    two = results[("torchtl", 2)]
    print(f"gradient all-reduce of resnet18 (2 ranks): bucketed {two['allreduce_bucketed'] * 1e3:.1f} ms, per tensor "
          f"{two['allreduce_per_tensor'] * 1e3:.1f} ms (ratio {two['allreduce_per_tensor'] / two['allreduce_bucketed']:.2f}); "
          f"a training step {two['step_seconds'] * 1e3:.0f} ms, so the bucketed all-reduce is "
          f"{100 * two['allreduce_bucketed'] / two['step_seconds']:.1f}% of a step (what overlap could hide at most)")


if __name__ == "__main__":
    main()
