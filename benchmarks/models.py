"""torchtl vs torchvision: forward (eval) and forward+backward time, same weights, same run.

Prints time ratios torchtl / torchvision (below 1.00: torchtl is faster). Runs are interleaved
(torchvision, torchtl, torchvision, ...) so that machine noise hits both sides alike; each
figure is the median over --repeats runs after one warm-up.

    python benchmarks/models.py                       # CPU, and CUDA when present
    python benchmarks/models.py --archs resnet18 --repeats 3 --device cpu
"""
import argparse
import statistics
import time

import torch
import torchvision

import torchtl

CLASSIFICATION = {"resnet18": (8, 224), "resnet50": (8, 224)}


def build_pair(arch):
    if arch in CLASSIFICATION:
        tv = getattr(torchvision.models, arch)(weights=None)
        return tv, getattr(torchtl.models, arch)(weights=tv)
    tv = getattr(torchvision.models.segmentation, arch)(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    return tv, getattr(torchtl.segmentation, arch)(weights=tv, num_classes=21, aux_loss=True)


def output_tensor(out):
    return out["out"] if isinstance(out, dict) else out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_once(model, x, train, device):
    sync(device)
    start = time.perf_counter()
    if train:
        model.train()
        out = output_tensor(model(x))
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)
    else:
        model.eval()
        with torch.no_grad():
            model(x)
    sync(device)
    return time.perf_counter() - start


def compare(arch, batch, size, device, repeats):
    tv, tl = build_pair(arch)
    tv.to(device), tl.to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    rows = []
    for train in (False, True):
        times = {"torchvision": [], "torchtl": []}
        for model in (tv, tl):  # warm-up
            time_once(model, x, train, device)
        for _ in range(repeats):
            times["torchvision"].append(time_once(tv, x, train, device))
            times["torchtl"].append(time_once(tl, x, train, device))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((arch, "fwd+bwd" if train else "fwd (eval)", batch, size, device.type,
                     med["torchvision"], med["torchtl"], med["torchtl"] / med["torchvision"]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(CLASSIFICATION) + ["deeplabv3_resnet50", "fcn_resnet50"])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [torch.device(d) for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'model':<20} {'pass':<11} {'batch':>5} {'px':>4} {'dev':<5} {'torchvision s':>13} {'torchtl s':>10} {'ratio':>6}")
    for device in devices:
        for arch in args.archs:
            if arch not in CLASSIFICATION and not hasattr(torchtl, "segmentation"):
                continue
            batch, size = CLASSIFICATION.get(arch, (2, 256))
            for row in compare(arch, batch, size, device, args.repeats):
                print(f"{row[0]:<20} {row[1]:<11} {row[2]:>5} {row[3]:>4} {row[4]:<5} {row[5]:>13.3f} {row[6]:>10.3f} {row[7]:>6.2f}")


if __name__ == "__main__":
    main()
