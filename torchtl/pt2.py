"""torchtl models as AOTInductor packages (``.pt2``) that plain LibTorch runs, checked before they ship.

``export(model, "model.pt2")`` runs ``torch.export`` on the model (a torchtl module computes
torchvision's Python forward over its C++ tensors under export, so every operation and weight is
seen), compiles it with AOTInductor with freezing, then loads the package it wrote and compares it
on random inputs, and on real images when given, with two references: torchtl's C++ forward and
torchvision's eager model holding the same weights. The comparison is the package's *parity
record*: the largest error against each reference, top-1 (classification) or per-pixel mask
(segmentation) agreement, and the speed against each. The record is written into the package
(``extra/torchtl_parity.json``) and beside it (``model.parity.json``), with what the package takes
(input size, batch, device, precision); the model file's metadata (classes, evaluation transform)
travels as ``extra/torchtl_model.json``, the very record a model file holds.

A package that strays further than ``RELATIVE_TOLERANCE`` from either reference is refused:
``ExportParityError`` names the reference, the inputs and the gap, the record beside the path says
``"accepted": false``, and no ``.pt2`` is written. ``RELATIVE_TOLERANCE`` is the largest error
divided by the largest magnitude of the reference's outputs. The float32 re-orderings of a
compiler (fused kernels, folded batch norm, other blockings) move ResNet outputs by about 1e-6 of
that magnitude, and torchtl's fast path by up to 1e-5 (``torchtl.fast_path``); the compiled models
users report as wrong (pytorch/pytorch#174467) are off by whole units of it. 1e-3 is a hundred
times the first and a thousand times smaller than the second.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from typing import Optional

import torch
from torch import nn

__all__ = ["export", "read_package", "compare_outputs", "check_parity", "ExportParityError", "RELATIVE_TOLERANCE",
           "MODEL_RECORD", "PARITY_RECORD"]

RELATIVE_TOLERANCE = 1e-3
MODEL_RECORD = "torchtl_model.json"  # extra/<name> inside the package, as inside a model file
PARITY_RECORD = "torchtl_parity.json"
_PARITY_FORMAT = "torchtl.parity"
_RANDOM_BATCH = 3  # not the example batch (2): the check also exercises the dynamic batch dimension
_MAX_REAL_IMAGES = 32


class ExportParityError(RuntimeError):
    """The compiled package computes something else than the model it was compiled from."""


class _MainOutput(nn.Module):
    """A segmentation model's ``"out"`` scores as one tensor: what a package returns (the aux head
    only serves training)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def _scores(output):
    return output["out"] if isinstance(output, dict) else output


def _open(model, classes=None, transform=None):
    """(torchtl model, its model-file metadata) from a model file path or a torchtl module.
    ``classes`` / ``transform`` replace the file's (a module: torchtl.save_model's defaults)."""
    import torchtl
    from torchtl import model_file

    if isinstance(model, (str, os.PathLike)):
        model = torchtl.load_model(model)
        metadata = model.torchtl_metadata
        if classes is None and transform is None:
            return model, dict(metadata)
        return model, model_file.model_metadata(
            model, classes=metadata["classes"] if classes is None else classes,
            transform=metadata["transform"] if transform is None else transform)
    if not hasattr(model, "to_torchvision") or not hasattr(model, "_builder"):
        raise TypeError(f"export takes a torchtl model or the path of a torchtl model file, got "
                        f"{type(model).__name__}; build the model with torchtl.models or torchtl.segmentation "
                        "(any torchvision weights load into them)")
    known = getattr(model, "torchtl_metadata", None)
    if known is not None and classes is None and transform is None:
        return model, dict(known)
    return model, model_file.model_metadata(model, classes=classes, transform="default" if transform is None
                                            else transform)


def _size_pair(example_size) -> tuple[int, int]:
    size = (example_size, example_size) if isinstance(example_size, int) else tuple(example_size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 16 for s in size):
        raise ValueError(f"example_size must be an int or (height, width), each >= 16, got {example_size!r}")
    return size


def _real_inputs(images, size, metadata) -> Optional[torch.Tensor]:
    """The images as the package sees them: the shorter side resized (the model file's
    ``resize_size`` scaled to ``size``), centre-cropped to ``size``, normalised with its mean/std."""
    if images is None:
        return None
    from torchvision.transforms.v2 import functional as TF

    from torchtl import data

    paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    files = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            files += sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names
                            if n.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    if not files:
        raise ValueError(f"no images in {', '.join(map(os.fspath, paths))}")
    transform = metadata.get("transform") or {}
    crop = transform.get("crop_size")
    resize = transform.get("resize_size")
    # The package's input size takes the place of the transform's crop: keep the transform's ratio.
    shorter = round(max(size) * resize / crop) if crop and resize else max(size)
    mean = transform.get("mean", data.IMAGENET_MEAN)
    std = transform.get("std", data.IMAGENET_STD)
    batch = []
    for path in files[:_MAX_REAL_IMAGES]:
        image = TF.center_crop(TF.resize(data.read_image(path), [shorter], antialias=True), list(size))
        batch.append(TF.normalize(image.float() / 255, list(mean), list(std)))
    return torch.stack(batch)


def _distance(got: torch.Tensor, reference: torch.Tensor, task: str) -> dict:
    got, reference = got.detach().float().cpu(), reference.detach().float().cpu()
    if got.shape != reference.shape:
        return {"shape": list(got.shape), "reference_shape": list(reference.shape), "max_abs_error": math.inf,
                "max_abs_reference": reference.abs().max().item(), "relative_error": math.inf,
                "agreement": 0.0}
    # NaN anywhere makes the error NaN, which no tolerance accepts.
    error = (got - reference).abs().max().item() if got.numel() else 0.0
    scale = reference.abs().max().item() if reference.numel() else 0.0
    relative = error / scale if scale > 0 else (0.0 if error == 0 else math.inf)
    agreement = (got.argmax(1) == reference.argmax(1)).float().mean().item()
    return {"max_abs_error": error, "max_abs_reference": scale, "relative_error": relative,
            ("top1_agreement" if task == "classification" else "mask_agreement"): agreement}


def compare_outputs(got: torch.Tensor, references: dict, task: str) -> dict:
    """The compiled outputs ``got`` against each reference's outputs (``{"torchtl": t, ...}``):
    per reference, the largest absolute error, the reference's largest magnitude, their ratio
    (``relative_error``) and the share of top-1 classes (classification) or mask pixels
    (segmentation) on which both agree."""
    return {f"against_{name}": _distance(got, reference, task) for name, reference in references.items()}


def check_parity(record: dict, tolerance: float = RELATIVE_TOLERANCE) -> Optional[str]:
    """None when every comparison in ``record["checks"]`` lies within ``tolerance``, else the gap
    in words: which inputs, which reference, how far."""
    gaps = []
    for inputs, comparison in record["checks"].items():
        if comparison is None:
            continue
        for against, d in comparison.items():
            if not isinstance(d, dict) or "relative_error" not in d:
                continue
            if "reference_shape" in d:
                gaps.append(f"on {inputs} inputs the package returns shape {d['shape']}, {against.split('_', 1)[1]} "
                            f"{d['reference_shape']}")
            elif not d["relative_error"] <= tolerance:
                gaps.append(f"on {inputs} inputs it strays from {against.split('_', 1)[1]} by {d['max_abs_error']:.3g} "
                            f"on outputs up to {d['max_abs_reference']:.3g} (relative {d['relative_error']:.3g}, "
                            f"tolerance {tolerance:g})")
    return "; ".join(gaps) or None


def _time_once(fn, x):
    start = time.perf_counter()
    fn(x)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) * 1000


def _speed(runs: dict, x: torch.Tensor, repeats: int) -> dict:
    """Milliseconds per batch of each run, timed in turn (interleaved, so load on the machine falls
    on all alike), and each reference's time over the package's."""
    for fn in runs.values():
        fn(x)  # warm-up: first-call allocations, oneDNN primitive creation
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(_time_once(fn, x))
    ms = {name: statistics.median(t) for name, t in times.items()}
    out = {"batch": x.shape[0], "repeats": repeats, **{f"{name}_ms": v for name, v in ms.items()}}
    for name in runs:
        if name != "package":
            out[f"package_vs_{name}"] = ms[name] / ms["package"]  # > 1: the package is faster
    out["load_average"] = os.getloadavg()[0]
    return out


def read_package(path) -> dict:
    """The records torchtl wrote into a package: ``{"model": ..., "parity": ...}`` (None when absent)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"package not found: {path}")
    try:
        reader = torch._C.PyTorchFileReader(path)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a .pt2 package (a zip archive): {e}") from None
    out = {}
    for key, name in (("model", MODEL_RECORD), ("parity", PARITY_RECORD)):
        record = f"extra/{name}"
        out[key] = json.loads(reader.get_record(record).decode()) if reader.has_record(record) else None
    return out


def _runtime_metadata(package: dict, task: str) -> dict:
    """What a C++ runner needs before it can call the package, as AOTInductor's own metadata
    (string to string; ``AOTIModelPackageLoader::get_metadata()`` returns it)."""
    return {"torchtl.task": task, "torchtl.input_size": ",".join(map(str, package["input_size"])),
            "torchtl.dynamic_batch": "1" if package["dynamic_batch"] else "0", "torchtl.precision": package["precision"]}


def _compile(program, example, package: dict, task: str, inductor_configs: Optional[dict]) -> list:
    configs = {"freezing": True, "aot_inductor.package": True, "aot_inductor.metadata": _runtime_metadata(package, task),
               **(inductor_configs or {})}
    with torch.no_grad():
        return torch._inductor.aot_compile(program.module(), (example,), options=configs)


def _package(path: str, files: list, extra: dict) -> None:
    from torch.export.pt2_archive._package import package_pt2

    package_pt2(path, aoti_files={"model": files}, extra_files={k: json.dumps(v, indent=1) for k, v in extra.items()})


def _check_device(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but this torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"torchtl exports for the CPU or CUDA, got device={str(device)!r}")
    return str(device)


def export(model, path, *, example_size=(224, 224), dynamic_batch: bool = True, device="cpu", images=None,
           classes=None, transform=None, tolerance: float = RELATIVE_TOLERANCE, speed_repeats: int = 5,
           inductor_configs: Optional[dict] = None) -> dict:
    """Compiles ``model`` (a torchtl module, or the path of a torchtl model file, a C++ program's
    ``best.pt`` included) into an AOTInductor package at ``path`` (``.pt2``) and returns its parity
    record (see the module's doc).

    Args:
        example_size: the (height, width) the package takes (an int for a square).
        dynamic_batch: the package takes any batch size; else only batches of 2, the example's.
        device: "cpu" (default) or a CUDA device, which the package then runs on.
        images: image files or folders whose images (up to 32) join the check as real inputs.
        classes, transform: the class names and evaluation transform the package carries, as
            ``torchtl.save_model`` takes them (default: the model file's; a module: none, and the
            references' preset).
        tolerance: the largest relative error accepted against either reference.
        inductor_configs: extra ``torch._inductor`` options (freezing is on).

    Raises ExportParityError (writing only the record beside ``path``) when the package strays
    further than ``tolerance`` from torchtl's C++ forward or torchvision's eager model.
    """
    path = os.fspath(path)
    if not path.endswith(".pt2"):
        raise ValueError(f"an AOTInductor package's name ends in .pt2, got {path}")
    size = _size_pair(example_size)
    device = _check_device(device)
    model, metadata = _open(model, classes, transform)
    task = metadata["task"]
    model = model.eval().to(device)
    twin = model.to_torchvision().eval()
    exported_module = _MainOutput(model) if task == "segmentation" else model
    example = torch.randn(2, 3, *size, device=device)
    batch = {0: torch.export.Dim("batch", min=1, max=4096)} if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(exported_module, (example,), dynamic_shapes=(batch,) if batch else None)
    package = {"input_size": list(size), "dynamic_batch": bool(dynamic_batch), "device": device,
               "precision": "float32", "output": "logits" if task == "classification" else "out scores"}
    files = _compile(program, example, package, task, inductor_configs)
    inputs = {"random": torch.randn(_RANDOM_BATCH if dynamic_batch else 2, 3, *size, device=device)}
    real = _real_inputs(images, size, metadata)
    if real is not None:
        inputs["real"] = real.to(device)
    references = {"torchtl": lambda x: _scores(model(x)), "torchvision": lambda x: _scores(twin(x))}
    record = _check(path, files, metadata, package, task, inputs, references, tolerance, speed_repeats)
    record["builder"] = metadata["builder"]
    return _finish(path, files, metadata, record, check_parity(record, tolerance))


def _check(path, files, metadata, package, task, inputs: dict, references: dict, tolerance, speed_repeats,
           speed_batch: Optional[torch.Tensor] = None, speed_runs: Optional[dict] = None) -> dict:
    """Packages ``files`` beside ``path``, loads the package, compares it with ``references`` on
    ``inputs`` and times it against ``speed_runs`` (default: the references) on ``speed_batch``
    (default: the random inputs)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        trial = os.path.join(scratch, "trial.pt2")
        _package(trial, files, {MODEL_RECORD: metadata})
        compiled = torch._inductor.aoti_load_package(trial)
        checks = {}
        with torch.no_grad():
            for name, x in inputs.items():
                checks[name] = compare_outputs(compiled(x), {k: ref(x) for k, ref in references.items()}, task)
            speed = _speed({"package": compiled, **(speed_runs or references)},
                           inputs["random"] if speed_batch is None else speed_batch, speed_repeats) \
                if speed_repeats else None
        del compiled
    return {"format": _PARITY_FORMAT, "format_version": 1, "package": os.path.basename(path), "task": task,
            **package, "torch_version": torch.__version__,
            "tolerance": {"relative": tolerance, "of": "largest |error| / largest |reference output|"},
            "inputs": {name: list(x.shape) for name, x in inputs.items()}, "checks": checks, "speed": speed}


def _finish(path, files, metadata, record, gap: Optional[str]) -> dict:
    """Writes the record beside ``path``, and the package when ``gap`` is None; else raises."""
    record["accepted"] = gap is None
    record["refused_because"] = gap
    beside = os.path.splitext(path)[0] + ".parity.json"
    with open(beside, "w") as f:
        json.dump(record, f, indent=1)
    if gap is not None:
        if os.path.exists(path):
            os.remove(path)  # an earlier accepted package of another model must not pass for this one
        raise ExportParityError(f"refused to write {path}: the compiled {record.get('builder') or 'model'} {gap}. "
                                f"The parity record is in {beside}")
    _package(path, files, {MODEL_RECORD: metadata, PARITY_RECORD: record})
    return record
