"""Self-describing model files: a ``torch.save`` state dict plus the metadata that rebuilds and feeds the model.

A torchtl model file is what ``torch.save(model.state_dict(), path)`` writes, so
``torchvision_model.load_state_dict(torch.load(path))`` keeps working, with one more record in the
same zip, ``extra/torchtl_model.json``, which ``torch.load`` ignores::

    {"format": "torchtl.model", "format_version": 1, "torchtl_version": "0.1.0",
     "task": "classification", "builder": "resnet18", "builder_args": {"num_classes": 2, ...},
     "classes": ["ants", "bees"],
     "transform": {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear",
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}

The record is defined, written and checked in C++ (``csrc/io/model_file.h``); this module only
hands it over. ``best.pt`` from ``engine.fit``, the ``torchtl`` command and the C++ programs is
such a file; ``docs/cpp.md`` describes every field.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Optional

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from torchtl import _C
from torchtl.weights import WeightsMismatchError, load_weights

__all__ = ["save_model", "load_model", "read_model_metadata", "model_metadata", "BUILDER_MODULES"]

# Where load_model looks a builder name up, in order.
BUILDER_MODULES = ["torchtl.models", "torchtl.segmentation"]

# builder_args' norm_layer is the class's name (torchtl builds these three).
_NORM_LAYER_NAMES = {nn.BatchNorm2d: "BatchNorm2d", nn.SyncBatchNorm: "SyncBatchNorm",
                     FrozenBatchNorm2d: "FrozenBatchNorm2d"}


def _path(path) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def read_model_metadata(path) -> Optional[dict]:
    """The metadata record of a model file as a dict, checked; None for a ``torch.save`` file without
    one (a bare state dict). Raises ValueError naming the file for anything that is not a model file,
    and the file and the field for a damaged record."""
    path = _path(path)
    record = _C.read_model_record(path)
    if record is None:
        return None
    return json.loads(_C.check_model_metadata(record, path))


def _builder_of(model) -> tuple[str, str, dict]:
    builder = getattr(model, "_builder", None)
    if builder is None:
        raise TypeError(f"save_model needs a model built by a torchtl builder (torchtl.models.resnet50(...), "
                        f"torchtl.segmentation.deeplabv3_resnet50(...)), got {type(model).__name__}; for another "
                        "module torch.save(model.state_dict(), path) writes its bare weights")
    module, name, kwargs = builder
    args = {}
    for key, value in kwargs.items():
        if key == "norm_layer":
            value = _NORM_LAYER_NAMES[value]
        elif isinstance(value, tuple):
            value = list(value)
        args[key] = value
    task = _C.builder_task(name) or ("segmentation" if module == "torchtl.segmentation" else "classification")
    return task, name, args


def _transform_record(transform, task: str):
    if transform is None:
        return None
    if isinstance(transform, dict):
        return transform
    if isinstance(transform, (_C.data.ClassificationTransform, _C.data.SegmentationTransform)):
        # A training transform gives its evaluation preset: the same sizes, mean and std.
        record = json.loads(_C.eval_transform_json(transform))
        kind = "classification" if isinstance(transform, _C.data.ClassificationTransform) else "segmentation"
        if kind != task:
            raise ValueError(f"transform is a {kind} transform, but the model is a {task} model")
        return record
    raise TypeError(f"transform must be a dict of the metadata's transform fields or a torchtl.data transform, "
                    f"got {type(transform).__name__}")


def model_metadata(model, *, classes=None, transform="default") -> dict:
    """The metadata record ``save_model`` writes for ``model``, checked. ``transform``: a dict, a
    torchtl.data transform, None (unknown), or "default" (the task's references preset)."""
    task, builder, args = _builder_of(model)
    if isinstance(transform, str) and transform == "default":
        transform = json.loads(_C.default_eval_transform_json(task))
    record = {"format": "torchtl.model", "format_version": 1, "torchtl_version": _version(), "task": task,
              "builder": builder, "builder_args": args,
              "classes": None if classes is None else [str(c) for c in classes],
              "transform": _transform_record(transform, task)}
    return json.loads(_C.check_model_metadata(json.dumps(record), f"<metadata of {builder}>"))


def _version() -> str:
    import torchtl
    return torchtl.__version__


def save_model(model, path, *, classes=None, transform=None) -> str:
    """Writes ``model``'s state dict with its metadata (the builder and its arguments, the task,
    ``classes`` and the evaluation ``transform``) as one model file, atomically; returns the path.

    ``model`` is a model from a torchtl builder. ``classes``: the class names, index order (e.g. an
    ImageFolder's ``classes``). ``transform``: the evaluation transform, as a dict of the record's
    transform fields or a ``torchtl.data.classification_transform``/``segmentation_transform``
    (a training one gives its evaluation preset); default: the references' preset of the task
    (Resize 256, CenterCrop 224; segmentation Resize 520), ImageNet mean and std.
    """
    record = model_metadata(model, classes=classes, transform="default" if transform is None else transform)
    path = os.fspath(path)
    _C.save_model_file(list(model.state_dict().items()), json.dumps(record), path)
    return path


def _builder_function(name: str, path: str):
    for module_name in BUILDER_MODULES:
        module = importlib.import_module(module_name)
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise ValueError(f"model file '{path}': field 'builder' is '{name}', which is no builder of "
                     f"{', '.join(BUILDER_MODULES)}")


def load_model(path, *, arch: Optional[str] = None, num_classes: Optional[int] = None, device=None) -> nn.Module:
    """The torchtl model a model file describes, its weights loaded, in eval mode.

    The metadata is at ``model.torchtl_metadata`` (a dict, as ``read_model_metadata`` returns it).
    A file without metadata (a bare torchvision state dict, an earlier torchtl's ``best.pt``) loads
    when ``arch`` names the builder; ``num_classes`` defaults to the head's rows, and the metadata
    gets the task's default transform and no classes. Given with a file that has metadata, ``arch``
    and ``num_classes`` must agree with it. Missing or contradictory metadata raises ValueError
    naming the file and the field.
    """
    path = _path(path)
    record, weights = _C.read_model_file(path, arch or "", num_classes)
    metadata = json.loads(record)
    kwargs = dict(metadata["builder_args"])
    if "norm_layer" in kwargs:
        kwargs["norm_layer"] = {v: k for k, v in _NORM_LAYER_NAMES.items()}[kwargs["norm_layer"]]
    build = _builder_function(metadata["builder"], path)
    try:
        model = build(**kwargs)
    except TypeError as e:
        raise ValueError(f"model file '{path}': field 'builder_args' {metadata['builder_args']} does not fit "
                         f"{metadata['builder']}: {e}") from None
    try:
        load_weights(model, dict(weights))
    except WeightsMismatchError as e:
        raise WeightsMismatchError(f"model file '{path}': the weights do not fit field 'builder' "
                                   f"'{metadata['builder']}' with field 'builder_args' {metadata['builder_args']}: "
                                   f"{e}") from None
    model.torchtl_metadata = metadata
    if device is not None:
        model.to(device)
    return model.eval()


def _loader_attribute(loader, name: str):
    return getattr(getattr(loader, "dataset", None), name, None)


def fit_metadata(model, train_loader, val_loader) -> str:
    """The record ``engine.fit`` writes into ``best.pt``, as JSON: class names from the loaders'
    dataset (a map file's classes file, an ImageFolder's ``classes``), the evaluation transform from
    the validation (else training) dataset's torchtl transform, null when neither has one. Empty
    for a model no torchtl builder made, and for segmentation_models_pytorch's architectures, whose
    builders the model-file format does not name yet: their best.pt stays a bare state dict."""
    builder = getattr(model, "_builder", None)
    if builder is None or builder[0] == "torchtl.segmentation_models":
        return ""
    loaders = [loader for loader in (val_loader, train_loader) if loader is not None]
    classes = next((c for c in (_loader_attribute(loader, "classes") for loader in loaders) if c is not None), None)
    transform = next((t for t in (_loader_attribute(loader, "transform") for loader in loaders)
                      if isinstance(t, (_C.data.ClassificationTransform, _C.data.SegmentationTransform))), None)
    return json.dumps(model_metadata(model, classes=classes, transform=transform))
