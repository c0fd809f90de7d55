"""The demo's own data: seeded textured shapes on cluttered backgrounds, written as real files.

No data or weights can be downloaded where the demo runs, so it makes its own transfer-learning
setting, in the layout of the README's real data sets:

- a *source* task (six shape classes, a few hundred images): a ResNet-18 is pretrained on it and
  exported as a traced archive, the weight format LibTorch programs load (the "ImageNet model" of the demo);
- a *target* task with few images per class (the "ants and bees" of the demo): four of the source
  shapes, as ants and bees are two of ImageNet's classes, drawn from another seed;
- a segmentation set in the PASCAL VOC layout (``JPEGImages``, gray-index masks in
  ``SegmentationClass``, ``ImageSets/Segmentation/{train,val}.txt``).

Everything is a function of the seed, and a finished tree is reused (a ``done`` marker holds its
parameters).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from torchvision.io import write_jpeg, write_png

__all__ = ["SOURCE_CLASSES", "TARGET_CLASSES", "SEGMENTATION_CLASSES", "make_classification_set",
           "make_segmentation_set", "pretrained_archive", "prepare"]

SOURCE_CLASSES = ("circle", "square", "triangle", "star", "plus", "half_disc")
# As ants and bees are ImageNet classes, the target classes are source shapes, drawn anew (another seed)
# and with 8 training images each; ring, frame, diamond and x_cross are there for harder variants.
TARGET_CLASSES = ("circle", "square", "triangle", "plus")
SEGMENTATION_CLASSES = ("background", "circle", "square", "triangle")


def _polygon(u, v, n, radius=1.0, phase=0.0):
    inside = np.ones_like(u, dtype=bool)
    for k in range(n):
        a = phase + 2 * np.pi * k / n
        inside &= u * np.cos(a) + v * np.sin(a) < radius * np.cos(np.pi / n)
    return inside


def _shape(kind, u, v):
    """Inside-test of a shape in unit coordinates (its bounding radius is about 1)."""
    r2 = u * u + v * v
    if kind == "circle":
        return r2 < 0.9
    if kind == "ring":
        return (r2 < 1.0) & (r2 > 0.35)
    if kind == "square":
        return np.maximum(abs(u), abs(v)) < 0.75
    if kind == "frame":
        m = np.maximum(abs(u), abs(v))
        return (m < 0.8) & (m > 0.45)
    if kind == "diamond":
        return abs(u) + abs(v) < 1.0
    if kind == "triangle":
        return _polygon(u, v, 3, 1.0, np.pi / 2)
    if kind == "star":
        return _polygon(u, v, 3, 0.95, np.pi / 2) | _polygon(u, v, 3, 0.95, -np.pi / 2)
    if kind == "plus":
        return ((abs(u) < 0.28) & (abs(v) < 0.95)) | ((abs(v) < 0.28) & (abs(u) < 0.95))
    if kind == "x_cross":
        a, b = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
        return ((abs(a) < 0.25) & (abs(b) < 0.95)) | ((abs(b) < 0.25) & (abs(a) < 0.95))
    if kind == "half_disc":
        return (r2 < 0.95) & (v > -0.1)
    raise ValueError(f"unknown shape '{kind}'")


def _texture(rng, size):
    """A colour with stripes or speckle: the same shape never looks the same twice."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(40, 255, 3).astype(np.float32)
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 9)
        pattern = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)[..., None]
        other = rng.uniform(0, 255, 3).astype(np.float32)
        return np.where(pattern > 0, base, 0.6 * base + 0.4 * other)
    return base + rng.normal(0, 25, (size, size, 3)).astype(np.float32)


def _background(rng, size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 200, 3), rng.uniform(0, 200, 3)
    t = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))[..., None]
    img = c0 + (c1 - c0) * (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    for _ in range(rng.integers(4, 10)):  # clutter: small blobs and lines of random colours
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.1)
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            blob = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        else:
            angle = rng.uniform(0, np.pi)
            along = abs((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)) < 2 * r
            blob = along & (abs((x - cx) * np.sin(angle) - (y - cy) * np.cos(angle)) < r / 4)
        img[blob] = colour
    return img + rng.normal(0, 8, (size, size, 3))


def _place(rng, img, kind, size, scale=(0.28, 0.42), center=None):
    """Draws one textured shape into ``img``; returns its boolean mask."""
    radius = rng.uniform(*scale) * size
    if center is None:
        center = rng.uniform(radius, size - radius, 2)
    angle = rng.uniform(-0.35, 0.35)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = (x - center[0]) / radius, (y - center[1]) / radius
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    mask = _shape(kind, u, v)
    img[mask] = _texture(rng, size)[mask]
    return mask


def _to_tensor(img):
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


def _finished(root, params):
    marker = os.path.join(root, "done.json")
    if not os.path.isfile(marker):
        return False
    with open(marker) as f:
        return json.load(f) == params


def _finish(root, params):
    with open(os.path.join(root, "done.json"), "w") as f:
        json.dump(params, f)


def make_classification_set(root, classes=SOURCE_CLASSES, *, train_per_class=50, val_per_class=20, size=64,
                            seed=0) -> dict:
    """``root/{train,val}/<class>/<i>.png`` plus ``root/train.txt`` and ``root/val.txt`` map files."""
    from torchtl.data import write_map_file

    root = os.fspath(root)
    params = dict(classes=list(classes), train_per_class=train_per_class, val_per_class=val_per_class, size=size,
                  seed=seed)
    maps = {split: os.path.join(root, f"{split}.txt") for split in ("train", "val")}
    if not _finished(root, params):
        for s, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class))):
            for c, kind in enumerate(classes):
                folder = os.path.join(root, split, kind)
                os.makedirs(folder, exist_ok=True)
                rng = np.random.default_rng([seed, s, c])
                for i in range(n):
                    img = _background(rng, size)
                    _place(rng, img, kind, size)
                    write_png(_to_tensor(img), os.path.join(folder, f"{i:04d}.png"))
            write_map_file(os.path.join(root, split), maps[split])
        _finish(root, params)
    return maps


def make_segmentation_set(root, *, train=48, val=16, size=64, seed=0) -> dict:
    """A VOC-layout tree (``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` holding class indices
    0..3 with 255 on shape borders, as VOC marks them) and its ``train.txt``/``val.txt`` map files."""
    from torchtl.data import write_map_file

    root = os.fspath(root)
    params = dict(train=train, val=val, size=size, seed=seed, classes=list(SEGMENTATION_CLASSES))
    maps = {split: os.path.join(root, f"{split}.txt") for split in ("train", "val")}
    if not _finished(root, params):
        for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        ids = {"train": [f"train_{i:04d}" for i in range(train)], "val": [f"val_{i:04d}" for i in range(val)]}
        for s, split in enumerate(("train", "val")):
            for i, name in enumerate(ids[split]):
                rng = np.random.default_rng([seed, 10 + s, i])
                img = _background(rng, size)
                mask = np.zeros((size, size), np.uint8)
                count = int(rng.integers(1, 3))
                centers = [(size * (0.3 + 0.4 * k), size * rng.uniform(0.3, 0.7)) for k in range(count)]
                for k in range(count):
                    c = int(rng.integers(1, len(SEGMENTATION_CLASSES)))
                    scale = (0.18, 0.26) if count > 1 else (0.25, 0.4)
                    inside = _place(rng, img, SEGMENTATION_CLASSES[c], size, scale, centers[k] if count > 1 else None)
                    mask[inside] = c
                edge = np.zeros_like(mask, bool)  # VOC's "void" border, ignored by the loss and metrics
                edge[:-1] |= mask[:-1] != mask[1:]
                edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
                mask[edge] = 255
                write_jpeg(_to_tensor(img), os.path.join(root, "JPEGImages", name + ".jpg"), quality=95)
                write_png(torch.from_numpy(mask)[None], os.path.join(root, "SegmentationClass", name + ".png"))
            with open(os.path.join(root, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
                f.write("\n".join(ids[split]) + "\n")
            write_map_file(root, maps[split], layout="voc", split=split)
        _finish(root, params)
    return maps


def pretrained_archive(root, source_maps, *, epochs=10, size=48, batch_size=16, seed=0, device="cpu",
                       progress=True, log=print) -> str:
    """A ResNet-18 trained on the source task by the C++ engine, exported as a traced archive
    (cached in ``root``; the demo's ``resnet18_source.pt``)."""
    import torchtl
    from torchtl import data

    root = os.fspath(root)
    path = os.path.join(root, "resnet18_source.pt")
    params = dict(epochs=epochs, size=size, batch_size=batch_size, seed=seed, maps=source_maps)
    if os.path.isfile(path) and _finished(root, params):
        return path
    os.makedirs(root, exist_ok=True)
    train_ds = data.MapDataset(source_maps["train"], transform=_cls_transform(True, size))
    val_ds = data.MapDataset(source_maps["val"], transform=_cls_transform(False, size))
    torch.manual_seed(seed)
    model = torchtl.models.resnet18(num_classes=train_ds.num_classes)
    start = time.perf_counter()
    history = torchtl.engine.fit(
        model, data.DataLoader(train_ds, batch_size, shuffle=True, num_workers=2, seed=seed, drop_last=True),
        data.DataLoader(val_ds, batch_size, num_workers=2, seed=seed), mode="scratch", optimizer="adam", lr=1e-3,
        weight_decay=1e-4, epochs=epochs, lr_schedule="cosine", device=device, seed=seed,
        progress=progress)
    val = history["epochs"][-1]["val"]
    log(f"pretrained resnet18 on the source task ({len(train_ds)} images, {epochs} epochs, "
        f"{time.perf_counter() - start:.0f} s): val acc {val['acc1']:.3f}")
    torchtl.export_traced(model, path, torch.randn(1, 3, size, size))
    _finish(root, params)
    return path


def _cls_transform(train, size):
    from torchtl import data

    if train:
        return data.classification_transform(train=True, size=size, scale=(0.6, 1.0))
    return data.classification_transform(train=False, size=size, resize_size=size)


def prepare(data_root="data", *, size=48, seed=0, device="cpu", progress=True, log=print) -> dict:
    """Generates (or reuses) the demo's data sets and pretrained archive under ``data_root``."""
    data_root = os.fspath(data_root)
    source = make_classification_set(os.path.join(data_root, "shapes_source"), SOURCE_CLASSES, train_per_class=80,
                                      val_per_class=15, size=size, seed=seed)
    target = make_classification_set(os.path.join(data_root, "shapes_target"), TARGET_CLASSES, train_per_class=8,
                                      val_per_class=30, size=size, seed=seed + 1)
    segmentation = make_segmentation_set(os.path.join(data_root, "shapes_voc"), train=24, val=12, size=64,
                                         seed=seed)
    archive = pretrained_archive(os.path.join(data_root, "weights"), source, size=size, seed=seed, device=device,
                                 progress=progress, log=log)
    return dict(source=source, target=target, segmentation=segmentation, weights=archive)
