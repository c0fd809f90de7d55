"""Map-file datasets, torchvision-exact transforms and a threaded loader, all in C++.

A map file lists one sample a line: ``path<TAB>class_index`` for classification or
``image<TAB>mask`` for segmentation, paths relative to the map file's folder. Images are decoded
by torchvision's own C++ ops in loader threads that never take the GIL, and the transforms
reproduce ``torchvision.transforms.v2`` (a transform seeded with ``s`` returns what v2 returns
after ``torch.manual_seed(s)``)::

    torchtl.data.write_map_file("hymenoptera_data/train", "train.txt")
    train = torchtl.data.MapDataset("train.txt", transform=torchtl.data.classification_transform(train=True))
    for images, labels in torchtl.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=4, seed=0):
        ...
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import torch

from torchtl import _C

_D = _C.data

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SkippedSamplesWarning",
    "write_map_file",
    "read_classes",
    "classes_path_for",
    "read_image",
    "read_mask",
    "classification_transform",
    "segmentation_transform",
    "MapDataset",
    "SegmentationMapDataset",
    "DataLoader",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SkippedSamplesWarning(UserWarning):
    """Bad lines or samples were skipped because ``on_error="skip"`` was asked for."""


def classes_path_for(map_path: str) -> str:
    """Where ``write_map_file`` puts the class names of ``map_path``: ``train.txt`` -> ``train_classes.txt``."""
    stem, _ = os.path.splitext(os.fspath(map_path))
    return stem + "_classes.txt"


def read_classes(path: str) -> list[str]:
    """Class names, one a line (line ``i`` names class ``i``)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def write_map_file(root, map_path, *, layout: str = "auto", split: str = "train", classes_path=None) -> int:
    """Writes a map file for a dataset tree and returns the number of samples.

    ``layout="imagefolder"``: ``root/<class>/**/<image>`` as ``torchvision.datasets.ImageFolder``
    reads it (same class indices, same order), plus a classes file (default
    ``classes_path_for(map_path)``). ``layout="voc"``: ``JPEGImages``, ``SegmentationClass`` and
    ``ImageSets/Segmentation/<split>.txt`` -> ``image<TAB>mask`` lines. ``"auto"`` picks VOC when
    ``root`` has ``JPEGImages`` and ``SegmentationClass`` folders.
    """
    root, map_path = os.fspath(root), os.fspath(map_path)
    if layout == "auto":
        is_voc = os.path.isdir(os.path.join(root, "JPEGImages")) and os.path.isdir(os.path.join(root, "SegmentationClass"))
        layout = "voc" if is_voc else "imagefolder"
    if layout == "voc":
        return _D.write_voc_map(root, split, map_path)
    if layout == "imagefolder":
        return _D.write_image_folder_map(root, map_path, os.fspath(classes_path or classes_path_for(map_path)))
    raise ValueError(f"layout must be 'auto', 'imagefolder' or 'voc', got {layout!r}")


def read_image(path) -> torch.Tensor:
    """uint8 3 x H x W RGB, EXIF orientation applied: what the datasets decode."""
    return _D.read_image(os.fspath(path))


def read_mask(path) -> torch.Tensor:
    """H x W class indices exactly as stored (palette index or gray value)."""
    return _D.read_mask(os.fspath(path))


def classification_transform(
    train: bool = False,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    resize_size: Optional[int] = None,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    hflip_prob: float = 0.5,
):
    """torchvision references/classification presets, in C++.

    train: ``RandomResizedCrop(size, scale, ratio, antialias=True)``, ``RandomHorizontalFlip(hflip_prob)``;
    eval: ``Resize(resize_size)`` (default ``size * 256 // 224``), ``CenterCrop(size)``; then
    ``ToDtype(float32, scale=True)`` and ``Normalize(mean, std)``. Call it on a uint8 3 x H x W
    tensor: ``t(image, seed=0)``.
    """
    if resize_size is None:
        resize_size = size * 256 // 224
    return _D.ClassificationTransform(
        train=bool(train),
        size=int(size),
        resize_size=int(resize_size),
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        scale=[float(s) for s in scale],
        ratio=[float(r) for r in ratio],
        hflip_prob=float(hflip_prob),
    )


def segmentation_transform(
    train: bool = False,
    base_size: int = 520,
    crop_size: int = 480,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    hflip_prob: float = 0.5,
    ignore_index: int = 255,
):
    """torchvision references/segmentation presets, in C++.

    train: ``RandomResize(base_size // 2, 2 * base_size)``, ``RandomHorizontalFlip(hflip_prob)``,
    pad right/bottom to ``crop_size`` (mask with ``ignore_index``), ``RandomCrop(crop_size)``;
    eval: the shorter side resized to ``base_size``. Masks are resized with nearest and returned
    as int64. Call it as ``t(image, mask, seed=0)``.
    """
    return _D.SegmentationTransform(
        train=bool(train),
        base_size=int(base_size),
        crop_size=int(crop_size),
        hflip_prob=float(hflip_prob),
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        ignore_index=int(ignore_index),
    )


def _check_on_error(on_error: str) -> bool:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error == "skip"


def _warn_skipped_lines(dataset) -> None:
    skipped = dataset._cpp.skipped_lines
    if skipped:
        shown = "\n  ".join(skipped[:10]) + ("\n  ..." if len(skipped) > 10 else "")
        warnings.warn(
            f"skipped {len(skipped)} bad line{'s' if len(skipped) != 1 else ''} of map file "
            f"'{dataset.map_file}':\n  {shown}",
            SkippedSamplesWarning,
            stacklevel=3,
        )


class _MapDatasetBase:
    _cpp = None

    def __len__(self) -> int:
        return len(self._cpp)

    def _index(self, index: int) -> int:
        n = len(self._cpp)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} samples")
        return index

    @property
    def map_file(self) -> str:
        return self._cpp.map_file

    def load(self, index: int, epoch: int = 0):
        """Sample ``index`` with the augmentation draws of ``epoch`` (what the DataLoader returns)."""
        return self._cpp.load(self._index(index), epoch)


class MapDataset(_MapDatasetBase):
    """``path<TAB>class_index`` map file -> (float32 image, int label), as a C++
    ``torch::data::datasets::Dataset``.

    ``num_classes`` (default: the length of the classes file next to the map file, if any) makes
    labels >= num_classes bad lines. The whole file is checked here: every bad line (wrong field
    count, non-integer or negative label, missing file) is reported in one error, or skipped with
    a ``SkippedSamplesWarning`` when ``on_error="skip"``. Without a transform the decoded uint8
    image is returned.
    """

    def __init__(self, map_file, transform=None, *, num_classes: Optional[int] = None, classes_file=None,
                 seed: int = 0, on_error: str = "raise"):
        map_file = os.fspath(map_file)
        if transform is not None and not isinstance(transform, _D.ClassificationTransform):
            raise TypeError("transform must come from torchtl.data.classification_transform(...)")
        classes_file = classes_file if classes_file is not None else classes_path_for(map_file)
        self.classes = read_classes(classes_file) if os.path.isfile(classes_file) else None
        if num_classes is None and self.classes is not None:
            num_classes = len(self.classes)
        self.num_classes = num_classes
        self.transform = transform
        self._cpp = _D.MapDataset(map_file, transform, -1 if num_classes is None else int(num_classes), int(seed),
                                  _check_on_error(on_error))
        _warn_skipped_lines(self)

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(path, class_index) pairs, as ImageFolder.samples."""
        return [(path, label) for path, label, _ in self._cpp.entries]

    def __getitem__(self, index: int):
        image, label = self._cpp.load(self._index(index), 0)
        return image, int(label)

    def __repr__(self) -> str:
        return f"MapDataset('{self.map_file}', {len(self)} samples, transform={self.transform!r})"


class SegmentationMapDataset(_MapDatasetBase):
    """``image<TAB>mask`` map file -> (float32 image, int64 H x W mask). Masks are read as class
    indices (palette index or gray value); a mask whose size differs from its image is an error
    naming both files."""

    def __init__(self, map_file, transform=None, *, seed: int = 0, on_error: str = "raise"):
        map_file = os.fspath(map_file)
        if transform is not None and not isinstance(transform, _D.SegmentationTransform):
            raise TypeError("transform must come from torchtl.data.segmentation_transform(...)")
        self.transform = transform
        self._cpp = _D.SegmentationMapDataset(map_file, transform, int(seed), _check_on_error(on_error))
        _warn_skipped_lines(self)

    @property
    def samples(self) -> list[tuple[str, str]]:
        return [(image, mask) for image, mask, _ in self._cpp.entries]

    def __getitem__(self, index: int):
        return self._cpp.load(self._index(index), 0)

    def __repr__(self) -> str:
        return f"SegmentationMapDataset('{self.map_file}', {len(self)} samples, transform={self.transform!r})"


class DataLoader:
    """Batches from a torchtl map dataset, loaded by ``num_workers`` C++ threads.

    Each epoch (each ``iter()``) is shuffled by ``(seed, epoch)`` and every sample's augmentation
    is drawn from ``(dataset seed, epoch, index)``, so a seed fixes the whole run whatever the
    number of workers. At most ``num_workers * prefetch_factor`` batches wait in memory. A bad
    sample raises (FileNotFoundError / ValueError / RuntimeError naming the map file, line and
    path) on the batch that holds it; with ``on_error="skip"`` it is left out of its batch and a
    ``SkippedSamplesWarning`` counts the skipped samples at the end of the epoch. Breaking out of
    the loop, an exception or dropping the iterator stops and joins the threads.

    ``num_replicas`` and ``rank`` shard it as ``torch.utils.data.DistributedSampler`` does: every
    rank shuffles the same way, the order is padded by repeating its start to a multiple of
    ``num_replicas``, and rank r takes every num_replicas-th sample from r, so all ranks take as
    many batches. ``torchtl.engine.fit`` shards an unsharded loader by itself under torch.distributed.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, num_workers: int = 2,
                 seed: Optional[int] = None, drop_last: bool = False, pin_memory: bool = False,
                 prefetch_factor: int = 2, on_error: str = "raise", num_replicas: int = 1, rank: int = 0):
        if not isinstance(dataset, _MapDatasetBase):
            raise TypeError(f"DataLoader takes a torchtl MapDataset or SegmentationMapDataset, got {type(dataset).__name__}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        if pin_memory and not torch.cuda.is_available():
            warnings.warn("pin_memory=True but no CUDA device is available; batches are not pinned", stacklevel=2)
            pin_memory = False
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self._skip = _check_on_error(on_error)
        self._args = dict(batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, seed=self.seed,
                          drop_last=drop_last, pin_memory=self.pin_memory, prefetch_factor=prefetch_factor,
                          on_error=on_error)
        self._cpp = _D.ThreadedLoader(dataset._cpp, self.batch_size, bool(shuffle), self.num_workers, self.seed,
                                      bool(drop_last), self.pin_memory, int(prefetch_factor), self._skip,
                                      int(num_replicas), int(rank))
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0

    def shard(self, num_replicas: int, rank: int) -> "DataLoader":
        """This loader's ``rank``-th of ``num_replicas`` shards (the same options otherwise)."""
        return DataLoader(self.dataset, **self._args, num_replicas=num_replicas, rank=rank)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter()`` loads (it counts up from 0 on its own)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._cpp)

    def __iter__(self) -> "_EpochIterator":
        epoch = self.epoch
        self.epoch += 1
        return _EpochIterator(self._cpp.epoch(epoch), epoch)


class _EpochIterator:
    def __init__(self, cpp_epoch, epoch: int):
        self._cpp = cpp_epoch
        self.epoch = epoch
        self.skipped: list[str] = []
        self._len = len(cpp_epoch)

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return self._len

    def __next__(self):
        if self._cpp is None:
            raise StopIteration
        out = self._cpp.next()
        if out is not None:
            fields, skipped, _ = out
            self.skipped += skipped
            if fields:
                return tuple(fields)
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Stops and joins the loader threads (also done on exhaustion and garbage collection)."""
        cpp, self._cpp = self._cpp, None
        if cpp is None:
            return
        cpp.close()
        if self.skipped:
            n = len(self.skipped)
            warnings.warn(
                f"skipped {n} bad sample{'s' if n != 1 else ''} in epoch {self.epoch}; first: {self.skipped[0]}",
                SkippedSamplesWarning,
                stacklevel=3,
            )

    def __del__(self):
        cpp = getattr(self, "_cpp", None)
        if cpp is not None:
            self._cpp = None
            cpp.close()
