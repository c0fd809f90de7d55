"""Map-file datasets, torchvision-exact transforms and a threaded loader, all in C++.

A map file lists one sample a line: ``path<TAB>class_index`` for classification or
``image<TAB>mask`` for segmentation, paths relative to the map file's folder. Images are decoded
by TorchCodec's C++ ops in loader threads that never take the GIL, and the transforms
reproduce ``torchvision.transforms.v2`` (a transform seeded with ``s`` returns what v2 returns
after ``torch.manual_seed(s)``)::

    torchtl.data.write_map_file("hymenoptera_data/train", "train.txt")
    train = torchtl.data.MapDataset("train.txt", transform=torchtl.data.classification_transform(train=True))
    for images, labels in torchtl.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=4, seed=0):
        ...
"""
from __future__ import annotations

import importlib.util
import operator
import os
import sys
import threading
import warnings
from typing import Optional, Sequence

import torch

from torchtl import _C


def _load_image_ops() -> None:
    # TorchCodec's image library, found without importing torchcodec (whose import also probes
    # for FFmpeg); $TORCHTL_TORCHCODEC_LIBRARY, when set, wins. Where it cannot be loaded (an
    # older torch), torchvision's deprecated image ops decode instead: said once, here.
    library = ""
    spec = importlib.util.find_spec("torchcodec")
    if spec is not None and spec.submodule_search_locations and not os.environ.get("TORCHTL_TORCHCODEC_LIBRARY"):
        library = os.path.join(list(spec.submodule_search_locations)[0], "libtorchcodec_image.so")
    reason = _C.data.load_image_ops(library)
    if reason:
        warnings.warn(f"torchtl decodes images with torchvision's deprecated image ops: {reason}", stacklevel=3)


_load_image_ops()

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SkippedSamplesWarning",
    "write_map_file",
    "read_classes",
    "classes_path_for",
    "find_classes_file",
    "read_image",
    "read_jpegs",
    "read_mask",
    "classification_transform",
    "classification_presets",
    "segmentation_transform",
    "MapDataset",
    "SegmentationMapDataset",
    "DataLoader",
    "count_classes",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SkippedSamplesWarning(UserWarning):
    """Bad lines or samples were skipped because ``on_error="skip"`` was asked for."""


def _fs(path) -> bytes:
    # Paths travel to C++ as the bytes the file system stores, so a name that is not UTF-8 (a
    # str holding os.fsdecode's surrogates, as ds.samples returns it) reaches the same file.
    return os.fsencode(path)


def classes_path_for(map_path: str) -> str:
    """Where ``write_map_file`` puts the class names of ``map_path``: ``train.txt`` -> ``train_classes.txt``,
    ``train.tsv`` -> ``train_classes.tsv`` (each map file has its own)."""
    stem, ext = os.path.splitext(os.fspath(map_path))
    return stem + "_classes" + ext


def find_classes_file(map_path: str) -> Optional[str]:
    """The classes file of ``map_path``, or None: ``classes_path_for(map_path)``, else the
    ``<stem>_classes.txt`` that earlier versions wrote for every extension, unless ``<stem>.txt``
    exists (then that file may be the classes of ``<stem>.txt``, and a warning says so)."""
    own = classes_path_for(map_path)
    if os.path.isfile(own):
        return own
    stem, _ = os.path.splitext(os.fspath(map_path))
    legacy = stem + "_classes.txt"
    if legacy == own or not os.path.isfile(legacy):
        return None
    if os.path.exists(stem + ".txt"):
        warnings.warn(f"'{legacy}' may hold the classes of '{stem}.txt' rather than of '{map_path}': not used; "
                      f"pass classes_file=, or write the map file again with write_map_file", stacklevel=3)
        return None
    return legacy


def read_classes(path: str) -> list[str]:
    """Class names, one a line (line ``i`` names class ``i``). Names are folder names, decoded as
    ``os.fsdecode`` decodes them (so they equal ``ImageFolder.classes`` whatever their encoding)."""
    with open(path, encoding=sys.getfilesystemencoding(), errors="surrogateescape") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def _refuse_overwriting_other_maps(map_path: str, classes_path: str) -> None:
    # A map-file write never destroys what an earlier one wrote: its map file must not be the
    # classes file of another map file, nor its classes file another map file (map lines hold tabs).
    stem, ext = os.path.splitext(map_path)
    if stem.endswith("_classes") and os.path.isfile(stem[: -len("_classes")] + ext):
        raise ValueError(f"'{map_path}' holds the classes of '{stem[: -len('_classes')] + ext}'; "
                         "choose another map file name")
    if os.path.isfile(classes_path):
        with open(classes_path, "rb") as f:
            if b"\t" in f.read(1 << 16):
                raise ValueError(f"the classes file '{classes_path}' of '{map_path}' is a map file; "
                                 "choose another map file name or classes_path")


def write_map_file(root, map_path, *, layout: str = "auto", split: str = "train", classes_path=None) -> int:
    """Writes a map file for a dataset tree and returns the number of samples.

    ``layout="imagefolder"``: ``root/<class>/**/<image>`` as ``torchvision.datasets.ImageFolder``
    reads it (same class indices, same order), plus a classes file (default
    ``classes_path_for(map_path)``). ``layout="voc"``: ``JPEGImages``, ``SegmentationClass`` and
    ``ImageSets/Segmentation/<split>.txt`` -> ``image<TAB>mask`` lines. ``"auto"`` picks VOC when
    ``root`` has ``JPEGImages`` and ``SegmentationClass`` folders.
    """
    root, map_path = os.fsdecode(root), os.fsdecode(map_path)
    if layout == "auto":
        is_voc = os.path.isdir(os.path.join(root, "JPEGImages")) and os.path.isdir(os.path.join(root, "SegmentationClass"))
        layout = "voc" if is_voc else "imagefolder"
    if layout == "voc":
        return _C.data.write_voc_map(_fs(root), split, _fs(map_path))
    if layout == "imagefolder":
        classes_path = os.fsdecode(classes_path or classes_path_for(map_path))
        _refuse_overwriting_other_maps(map_path, classes_path)
        return _C.data.write_image_folder_map(_fs(root), _fs(map_path), _fs(classes_path))
    raise ValueError(f"layout must be 'auto', 'imagefolder' or 'voc', got {layout!r}")


def read_image(path) -> torch.Tensor:
    """uint8 3 x H x W RGB, EXIF orientation applied: what the datasets decode."""
    return _C.data.read_image(_fs(path))


def read_jpegs(paths, device="cuda") -> list[torch.Tensor]:
    """JPEG files decoded in one batch on a CUDA device (nvJPEG): uint8 3 x H x W RGB tensors on
    ``device``, the pixels ``read_image`` gives up to nvJPEG's IDCT."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"read_jpegs decodes on a CUDA device, got {device}; use read_image on the CPU")
    return _C.data.read_jpegs([os.fspath(p) for p in paths], device)


def read_mask(path) -> torch.Tensor:
    """H x W class indices exactly as stored (palette index or gray value)."""
    return _C.data.read_mask(_fs(path))


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
    interpolation: str = "bilinear",
    auto_augment: Optional[str] = None,
    ra_magnitude: int = 9,
    augmix_severity: int = 3,
    random_erase: float = 0.0,
):
    """torchvision references/classification presets, in C++.

    train (``ClassificationPresetTrain``): ``RandomResizedCrop(size, scale, ratio, interpolation,
    antialias=True)``, ``RandomHorizontalFlip(hflip_prob)`` (left out at 0), the ``auto_augment``
    policy (``"ta_wide"``, ``"ra"`` with ``ra_magnitude``, ``"augmix"`` with ``augmix_severity``,
    ``"imagenet"``; the preset's interpolation), then ``ToDtype(float32, scale=True)``,
    ``Normalize(mean, std)`` and ``RandomErasing(p=random_erase)`` when ``random_erase > 0``.
    eval: ``Resize(resize_size, interpolation)`` (default ``size * 256 // 224``), ``CenterCrop(size)``,
    ``ToDtype``, ``Normalize``. ``interpolation``: ``"bilinear"``, ``"nearest"`` or ``"bicubic"``,
    as the references' ``--interpolation``. Call it on a uint8 3 x H x W tensor: ``t(image, seed=0)``.
    """
    if resize_size is None:
        resize_size = size * 256 // 224
    return _C.data.ClassificationTransform(
        train=bool(train),
        size=int(size),
        resize_size=int(resize_size),
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        scale=[float(s) for s in scale],
        ratio=[float(r) for r in ratio],
        hflip_prob=float(hflip_prob),
        interpolation=str(interpolation),
        auto_augment="" if auto_augment is None else str(auto_augment),
        ra_magnitude=int(ra_magnitude),
        augmix_severity=int(augmix_severity),
        random_erase=float(random_erase),
    )


def classification_presets(
    *,
    train_crop_size: int = 224,
    val_resize_size: int = 256,
    val_crop_size: int = 224,
    interpolation: str = "bilinear",
    auto_augment: Optional[str] = None,
    ra_magnitude: int = 9,
    augmix_severity: int = 3,
    random_erase: float = 0.0,
    hflip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """The references' train and validation presets from their flags' names and defaults.

    Returns ``(train_transform, val_transform)`` as torchvision's ``references/classification/train.py``
    builds them from ``--train-crop-size``, ``--val-resize-size``, ``--val-crop-size``,
    ``--interpolation``, ``--auto-augment``, ``--ra-magnitude``, ``--augmix-severity`` and
    ``--random-erase``; see :func:`classification_transform`.
    """
    train = classification_transform(
        True, train_crop_size, mean, std, hflip_prob=hflip_prob, interpolation=interpolation,
        auto_augment=auto_augment, ra_magnitude=ra_magnitude, augmix_severity=augmix_severity,
        random_erase=random_erase,
    )
    val = classification_transform(False, val_crop_size, mean, std, resize_size=val_resize_size,
                                   interpolation=interpolation)
    return train, val


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
    return _C.data.SegmentationTransform(
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

    ``num_classes`` (default: the length of the classes file next to the map file, if any: see
    ``find_classes_file``) makes
    labels >= num_classes bad lines. The whole file is checked here: every bad line (wrong field
    count, non-integer or negative label, missing file) is reported in one error, or skipped with
    a ``SkippedSamplesWarning`` when ``on_error="skip"``. Without a transform the decoded uint8
    image is returned.
    """

    def __init__(self, map_file, transform=None, *, num_classes: Optional[int] = None, classes_file=None,
                 seed: int = 0, on_error: str = "raise"):
        map_file = os.fsdecode(map_file)
        if transform is not None and not isinstance(transform, _C.data.ClassificationTransform):
            raise TypeError("transform must come from torchtl.data.classification_transform(...)")
        classes_file = classes_file if classes_file is not None else find_classes_file(map_file)
        self.classes = read_classes(classes_file) if classes_file is not None else None
        if num_classes is None and self.classes is not None:
            num_classes = len(self.classes)
        self.num_classes = num_classes
        self.transform = transform
        self._cpp = _C.data.MapDataset(_fs(map_file), transform, -1 if num_classes is None else int(num_classes), seed,
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
    naming both files. With ``num_classes``, a mask value ``>= num_classes`` other than
    ``ignore_index`` is an error naming the mask file (checked as each mask is loaded)."""

    def __init__(self, map_file, transform=None, *, num_classes: Optional[int] = None, ignore_index: int = 255,
                 seed: int = 0, on_error: str = "raise"):
        map_file = os.fsdecode(map_file)
        if transform is not None and not isinstance(transform, _C.data.SegmentationTransform):
            raise TypeError("transform must come from torchtl.data.segmentation_transform(...)")
        if num_classes is not None and int(num_classes) <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.transform = transform
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self._cpp = _C.data.SegmentationMapDataset(_fs(map_file), transform, -1 if num_classes is None else int(num_classes),
                                              self.ignore_index, seed, _check_on_error(on_error))
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

    ``decode_device="cuda"`` (a MapDataset's loader) decodes and transforms each batch on that GPU:
    the threads read the files, nvJPEG decodes the batch's JPEGs in one call (other formats, and
    JPEGs that EXIF turns, are decoded on the CPU and copied), the transform runs there, and images
    and labels come out on the device. Pixels match the CPU's up to nvJPEG's IDCT. Any other device
    runs the same batch-at-a-time path (``"cpu"`` gives the default loader's batches exactly).
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, num_workers: int = 2,
                 seed: Optional[int] = None, drop_last: bool = False, pin_memory: bool = False,
                 prefetch_factor: int = 2, on_error: str = "raise", num_replicas: int = 1, rank: int = 0,
                 decode_device=None):
        if not isinstance(dataset, _MapDatasetBase):
            raise TypeError(f"DataLoader takes a torchtl MapDataset or SegmentationMapDataset, got {type(dataset).__name__}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        if decode_device is not None:
            decode_device = torch.device(decode_device)
            if decode_device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"decode_device={str(decode_device)!r} but no CUDA device is available")
        if pin_memory and not torch.cuda.is_available():
            warnings.warn("pin_memory=True but no CUDA device is available; batches are not pinned", stacklevel=2)
            pin_memory = False
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = seed
        self.pin_memory = bool(pin_memory)
        self.decode_device = decode_device
        self._skip = _check_on_error(on_error)
        self._args = dict(batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, seed=seed,
                          drop_last=drop_last, pin_memory=self.pin_memory, prefetch_factor=prefetch_factor,
                          on_error=on_error, decode_device=decode_device)
        self._cpp = _C.data.ThreadedLoader(dataset._cpp, self.batch_size, bool(shuffle), self.num_workers, seed,
                                      bool(drop_last), self.pin_memory, int(prefetch_factor), self._skip,
                                      int(num_replicas), int(rank),
                                      None if decode_device is None else str(decode_device))
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0

    def shard(self, num_replicas: int, rank: int) -> "DataLoader":
        """This loader's ``rank``-th of ``num_replicas`` shards (the same options otherwise)."""
        return DataLoader(self.dataset, **self._args, num_replicas=num_replicas, rank=rank)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter()`` loads (it counts up from 0 on its own)."""
        epoch = operator.index(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

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
        # The iterator may be shared by threads (the C++ epoch hands each batch out once); this
        # makes its end (close and the skipped-samples warning) happen once too.
        self._close_lock = threading.Lock()

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return self._len

    def __next__(self):
        cpp = self._cpp
        if cpp is None:
            raise StopIteration
        out = cpp.next()
        if out is not None:
            fields, skipped, _ = out
            self.skipped += skipped
            if fields:
                return tuple(fields)
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Stops and joins the loader threads (also done on exhaustion and garbage collection)."""
        with self._close_lock:
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


def count_classes(map_file) -> int:
    """The number of classes of a classification map file: its classes file's length, else the
    largest label + 1 (read by the C++ reader, which names the line of any malformed entry)."""
    classes = find_classes_file(map_file)
    if classes is not None:
        return len(read_classes(classes))
    return max(label for _, label in MapDataset(map_file).samples) + 1
