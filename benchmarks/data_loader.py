"""Images per second: torchtl's threaded C++ loader vs torchvision ImageFolder + DataLoader.

Both run the torchvision references' classification train transform (RandomResizedCrop 224,
horizontal flip, float conversion, normalisation) over the same 500 x 375 JPEGs, which this
script generates once into data/bench_jpegs (git-ignored). Prints images/s of each setting and
the ratio of torchtl against the best torchvision setting, all measured in this run.

--stages also times one sample at a time on one thread, each path's cost per image and its parts:
the ratio of the two per-image costs is what the loaders' ratio comes to when both keep every core
busy, and a loader cannot outrun its threads / its per-image cost.

    python benchmarks/data_loader.py [--images 600] [--batch-size 32] [--epochs 2] [--stages]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torchvision
from torchvision.transforms import v2

import torchtl
from torchtl import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("ant", "bee", "cat", "dog")


def make_jpegs(folder: str, count: int) -> None:
    """`count` 500 x 375 JPEGs of smooth colour fields plus texture, spread over 4 class folders."""
    import cv2

    rng = np.random.RandomState(0)
    for i in range(count):
        path = os.path.join(folder, CLASSES[i % len(CLASSES)], f"{i:05d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        coarse = rng.randint(0, 256, (6, 8, 3)).astype(np.uint8)
        image = cv2.resize(coarse, (500, 375), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        image += rng.randint(-25, 26, image.shape).astype(np.int16)
        cv2.imwrite(path, np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])


def throughput(loader, epochs: int) -> float:
    """Images/s over `epochs` full passes, after one untimed warm-up batch."""
    next(iter(loader))
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _ in loader:
            count += images.shape[0]
    return count / (time.perf_counter() - start)


def per_image_ms(fn, items, repeats: int = 3) -> float:
    """Milliseconds per item of fn over items, the best of `repeats` passes (after one warm-up call)."""
    fn(items[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best * 1e3


def stages(ours_ds, tv_ds, threads: int) -> None:
    """One thread, one sample at a time: each path's cost per image and its decode share."""
    import PIL.Image
    from torchcodec.decoders import decode_image
    from torchvision.transforms.v2 import functional as F

    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    indices = list(range(min(len(ours_ds), 100)))
    paths = [path for path, _ in ours_ds.samples[:len(indices)]]
    encoded = [torchvision.io.read_file(path) for path in paths]
    decoded = decode_image(encoded[0])
    crop = decoded[:, 40:340, 50:450]
    resized = F.resize(crop, [224, 224], antialias=True)
    costs = {
        "torchtl sample (read + TorchCodec decode + transform, C++)": per_image_ms(ours_ds.__getitem__, indices),
        "  TorchCodec decode_jpeg": per_image_ms(decode_image, encoded),
        "  uint8 crop 400x300 -> resize 224 (antialiased bilinear)": per_image_ms(
            lambda _: F.resize(crop, [224, 224], antialias=True), indices),
        "  to float, normalise": per_image_ms(
            lambda _: F.normalize(F.to_dtype(resized, torch.float32, scale=True), data.IMAGENET_MEAN,
                                  data.IMAGENET_STD), indices),
        "torchvision sample (ImageFolder: PIL open + transform)": per_image_ms(tv_ds.__getitem__, indices),
        "  PIL open + decode + convert('RGB')": per_image_ms(lambda p: PIL.Image.open(p).convert("RGB"), paths),
    }
    torch.set_num_threads(default_threads)
    print(f"one thread, one sample at a time, best of 3 passes over {len(indices)} images:")
    for name, ms in costs.items():
        print(f"  {name:68s} {ms:6.2f} ms/image")
    ours = costs["torchtl sample (read + TorchCodec decode + transform, C++)"]
    theirs = costs["torchvision sample (ImageFolder: PIL open + transform)"]
    print(f"per-image cost, torchvision / torchtl: {theirs / ours:.2f}x (the loaders' ratio when both keep "
          f"every core busy); torchtl's ceiling with {threads} threads on free cores: {threads * 1e3 / ours:.0f} "
          f"img/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torchtl loader threads")
    parser.add_argument("--stages", action="store_true", help="also time one sample at a time on one thread")
    args = parser.parse_args()

    folder = os.path.join(ROOT, "data", "bench_jpegs")
    make_jpegs(folder, args.images)
    map_path = os.path.join(ROOT, "data", "bench_jpegs.txt")
    n = data.write_map_file(folder, map_path)
    for path, _ in data.MapDataset(map_path).samples:  # warm the page cache for every contestant
        with open(path, "rb") as f:
            f.read()

    print(f"{n} JPEGs 500x375, batch {args.batch_size}, RandomResizedCrop(224) + flip + normalise, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"torch threads {torch.get_num_threads()}")

    ours_ds = data.MapDataset(map_path, transform=data.classification_transform(train=True, size=224))
    ours = data.DataLoader(ours_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.threads, seed=0,
                           drop_last=True)
    results = {}
    results[f"torchtl DataLoader, {args.threads} threads"] = throughput(ours, args.epochs)

    tv_transform = v2.Compose([
        v2.RandomResizedCrop(224, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD),
    ])
    tv_ds = torchvision.datasets.ImageFolder(folder, transform=tv_transform)
    best_name, best = None, 0.0
    # The third setting keeps ATen to one thread in the main process, which helps torchvision
    # when other work shares the cores: the best of all three is the reference.
    for workers, torch_threads in ((0, torch.get_num_threads()), (2, torch.get_num_threads()), (0, 1)):
        default_threads = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
        loader = torch.utils.data.DataLoader(tv_ds, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                             drop_last=True, persistent_workers=workers > 0)
        name = f"torchvision ImageFolder (PIL) + DataLoader, num_workers={workers}, torch threads {torch_threads}"
        results[name] = throughput(loader, args.epochs)
        torch.set_num_threads(default_threads)
        if results[name] > best:
            best_name, best = name, results[name]

    for name, rate in results.items():
        print(f"  {name:78s} {rate:8.1f} img/s")
    ours_rate = results[f"torchtl DataLoader, {args.threads} threads"]
    print(f"torchtl / best torchvision ({best_name}): {ours_rate / best:.2f}x")
    if args.stages:
        stages(ours_ds, tv_ds, args.threads)
    print(f"load average during the run: {os.getloadavg()[0]:.2f} (other processes share these cores when > 1)")


if __name__ == "__main__":
    main()
