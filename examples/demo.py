"""The demo (``make demo``): the transfer-learning and segmentation experiments on generated data, C++ engine vs Python twin.

1. Generates (or reuses, under data/) textured shapes: a source task, a target task with few images
   per class, and a VOC-layout segmentation set; pretrains a ResNet-18 on the source task with the
   C++ engine and exports it as a traced archive (the weight format LibTorch programs load).
2. Transfer learning on the target task: scratch / finetune / feature_extractor, C++ vs Python.
3. Segmentation: fcn_resnet50 at 48 px, C++ vs Python, with mask overlays.
4. The CIFAR-10 network of PyTorch's classifier tutorial, as an nn.Sequential, 5 epochs on
   generated 10-class 32 px images from a torch.utils.data.DataLoader: torchtl.engine.fit moves
   the Sequential into C++ and trains it there, the Python twin runs the tutorial's loop.

Ends by printing the tables and the report folder. Measured: under 8 minutes on 2 shared CPU cores,
about 4 once data/ is cached (README).
"""
import argparse
import copy
import math
import os
import time

import torch
from torch import nn

import torchtl
from torchtl.tools import compare, demo_data


def cifar_like(n_per_class, seed):
    """10 classes of 32 px images: a class is an orientation and frequency of stripes and a tint, under noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    images, labels = [], []
    for c in range(10):
        angle, freq = math.pi * c / 10, 0.25 + 0.05 * (c % 3)
        across = freq * (xx * math.cos(angle) + yy * math.sin(angle))
        tint = torch.tensor([math.cos(c), math.sin(c), math.cos(2 * c)]).view(3, 1, 1)
        phase = torch.rand(n_per_class, 1, 1, 1, generator=g) * 2 * math.pi
        x = torch.sin(across + phase).expand(n_per_class, 3, 32, 32) + 0.5 * tint
        images.append(x + 0.8 * torch.randn(n_per_class, 3, 32, 32, generator=g))
        labels.append(torch.full((n_per_class,), c))
    return torch.utils.data.TensorDataset(torch.cat(images), torch.cat(labels))


def tutorial_net():
    """PyTorch's CIFAR-10 tutorial network (Net), written as an nn.Sequential."""
    return nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
                         nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def cifar_tutorial(device, seed, epochs=5):
    """C++ vs Python on the tutorial's net and recipe (SGD lr 0.001, momentum 0.9, batch 4)."""
    train, val = cifar_like(100, seed), cifar_like(30, seed + 1)
    torch.manual_seed(seed)
    start = tutorial_net()
    rows = []
    for name, fit in (("C++ (torchtl.engine)", torchtl.engine.fit), ("Python (reference)", torchtl.reference.fit)):
        net = copy.deepcopy(start)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        loaders = [torch.utils.data.DataLoader(d, batch_size=4, shuffle=s) for d, s in ((train, True), (val, False))]
        t = time.perf_counter()
        h = fit(net, *loaders, optimizer=optimizer, epochs=epochs, device=device, seed=seed, progress=False)
        seconds = time.perf_counter() - t
        rows.append((name, h["epochs"][-1]["val"]["acc1"], seconds, sum(e["images"] for e in h["epochs"]) / seconds))
    ratio = rows[1][2] / rows[0][2]
    lines = ["| engine | val acc | time | train img/s |", "|---|---|---|---|"]
    lines += [f"| {n} | {acc:.3f} | {s:.1f} s | {ips:.0f} |" for n, acc, s, ips in rows]
    lines += ["", f"C++ / Python speed: {ratio:.2f}x ({epochs} epochs, 1000 training images of 32 px, batch 4)"]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=torchtl.engine.default_device())
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default=os.path.join("reports", "demo"))
    p.add_argument("--epochs", type=int, default=10, help="transfer-learning epochs")
    p.add_argument("--seg-epochs", type=int, default=5, help="segmentation epochs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    start = time.perf_counter()
    print(f"[1/4] data and pretrained weights under {args.data_root}/ (generated once, then cached)")
    prepared = demo_data.prepare(args.data_root, seed=args.seed, device=args.device, progress=False)
    prep_seconds = time.perf_counter() - start

    print("[2/4] transfer learning: scratch / finetune / feature_extractor, C++ engine and Python twin")
    t = time.perf_counter()
    cls = compare.compare_classification(
        prepared["target"]["train"], prepared["target"]["val"], os.path.join(args.out, "transfer_learning"),
        weights=prepared["weights"], epochs=args.epochs, batch_size=8, size=48,
        lr=dict(scratch=0.01, finetune=0.002, feature_extractor=0.01), device=args.device,
        seed=args.seed)
    cls_seconds = time.perf_counter() - t

    print("[3/4] segmentation: fcn_resnet50 at 48 px, C++ engine and Python twin")
    t = time.perf_counter()
    seg = compare.compare_segmentation(
        prepared["segmentation"]["train"], prepared["segmentation"]["val"], os.path.join(args.out, "segmentation"),
        arch="fcn_resnet50", num_classes=len(demo_data.SEGMENTATION_CLASSES), epochs=args.seg_epochs, batch_size=4,
        size=48, device=args.device, seed=args.seed)
    seg_seconds = time.perf_counter() - t

    print("[4/4] PyTorch's CIFAR-10 tutorial network as an nn.Sequential, 5 epochs on generated 32 px data")
    t = time.perf_counter()
    cifar = cifar_tutorial(args.device, args.seed)
    cifar_seconds = time.perf_counter() - t
    total = time.perf_counter() - start

    timing = (f"demo time on {args.device} ({os.cpu_count()} cores visible): {total:.0f} s in all = data + pretraining "
              f"{prep_seconds:.0f} s (cached under {args.data_root}/ for later runs), transfer learning {cls_seconds:.0f} s, "
              f"segmentation {seg_seconds:.0f} s, CIFAR-10 tutorial {cifar_seconds:.0f} s")
    summary = ["# torchtl demo: C++ engine vs Python twin", "",
               f"Target task: {len(demo_data.TARGET_CLASSES)} classes ({', '.join(demo_data.TARGET_CLASSES)}), "
               "8 training images per class, 48 px; pretrained start: ResNet-18 trained on "
               f"{len(demo_data.SOURCE_CLASSES)} other shape classes.", "",
               "## Transfer learning", "", cls["table"], "",
               "## Segmentation", "", seg["table"], "",
               "## PyTorch's CIFAR-10 tutorial network (nn.Sequential, torch DataLoader)", "", cifar, "",
               f"Details, curves and overlays: [transfer_learning/report.md](transfer_learning/report.md), "
               "[segmentation/report.md](segmentation/report.md).", "", timing]
    os.makedirs(args.out, exist_ok=True)
    report_path = os.path.join(args.out, "report.md")
    with open(report_path, "w") as f:
        f.write("\n".join(summary) + "\n")

    print()
    print("Transfer learning (val accuracy after training; time = wall time of fit):")
    print(cls["table"])
    print()
    print("Segmentation:")
    print(seg["table"])
    print()
    print("PyTorch's CIFAR-10 tutorial network:")
    print(cifar)
    print()
    print(timing)
    print(f"report: {report_path}")


if __name__ == "__main__":
    main()
