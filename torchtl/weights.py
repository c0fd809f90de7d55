"""Weights in and out: torchvision modules, state dicts, torch.save files and traced archives."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

from torchtl import _C


class WeightsMismatchError(ValueError):
    """The weights do not fit the model; the message lists every missing, unexpected and wrongly shaped key."""


class LoadResult(NamedTuple):
    missing_keys: list
    unexpected_keys: list


def _unwrap_checkpoint(mapping: Mapping):
    if mapping and all(isinstance(v, torch.Tensor) for v in mapping.values()):
        return mapping
    for key in ("model", "state_dict"):
        if isinstance(mapping.get(key), Mapping):
            return _unwrap_checkpoint(mapping[key])
    if any(isinstance(v, torch.Tensor) for v in mapping.values()):
        # A state dict with a stray value: name it, rather than calling the whole dict no state dict.
        key, value = next((k, v) for k, v in mapping.items() if not isinstance(v, torch.Tensor))
        raise ValueError(f"state dict key {key!r} holds a {type(value).__name__}, not a tensor")
    raise ValueError("expected a state dict (names to tensors) or a checkpoint holding one under 'model' or 'state_dict'")


def hub_cached_file(url: str, name: str) -> str:
    """The file torch.hub keeps for ``url`` (``torch.hub.get_dir()/checkpoints/<file name of the url>``,
    where ``torch.hub.load_state_dict_from_url`` puts what it downloads), for weights called ``name``.

    torchtl downloads nothing: when the file is not there this raises FileNotFoundError naming the
    weights, the path looked at, and how to pass a local file instead. For any pretrained weights
    known by a URL (torchvision's enums, an encoder's ``encoder_weights``).
    """
    from urllib.parse import urlparse

    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    if os.path.isfile(path):
        return path
    raise FileNotFoundError(
        f"weights {name} are not in torch.hub's cache ({path}), and torchtl downloads nothing. Put the file "
        f"{url} there (torch.hub.load_state_dict_from_url(url) does it where a network is available), "
        f"or pass a local file: weights=\"{os.path.basename(path)}\" (any torch.save state dict or traced archive)")


def resolve_weights(weights, weights_enum=None):
    """torchvision's ways of naming weights, resolved without a network, as torchvision resolves them.

    A string naming a member of ``weights_enum`` (the builder's torchvision enum), as
    ``"IMAGENET1K_V1"``, ``"DEFAULT"`` or ``"ResNet18_Weights.IMAGENET1K_V1"`` (what torchvision's
    reference scripts pass), is that member; a ``WeightsEnum`` member becomes the path of its file in
    torch.hub's cache (``hub_cached_file``). Anything else is returned as it is (a module, a state
    dict, a file path).
    """
    try:
        from torchvision.models import WeightsEnum
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return weights
    if isinstance(weights, str) and weights_enum is not None:
        name = weights.removeprefix(weights_enum.__name__ + ".")
        if name in weights_enum.__members__:
            weights = weights_enum[name]
        elif "." in weights and weights.split(".")[0].endswith("_Weights") and not os.path.exists(weights):
            raise ValueError(f"weights={weights!r}: not a member of {weights_enum.__name__} (these are: "
                             f"{', '.join(weights_enum.__members__)}), nor a file")
    if isinstance(weights, WeightsEnum):
        return hub_cached_file(weights.url, f"{type(weights).__name__}.{weights._name_}")
    return weights


def read_state_dict(source) -> list[tuple[str, torch.Tensor]]:
    """Weights from any source torchtl accepts, as an ordered list of (name, tensor).

    ``source`` is a module (torchvision's, torchtl's, a loaded TorchScript module), a state dict
    (or a checkpoint dict holding one under ``"model"``/``"state_dict"``), or the path of a
    ``torch.save`` file or a ``torch.jit.trace``/``torch.jit.script`` archive. The ``module.``
    prefix of DataParallel/DistributedDataParallel checkpoints is dropped.
    """
    # torchvision's weight enums load from torch.hub's cache, as torchvision does without a network.
    source = resolve_weights(source)
    if isinstance(source, nn.Module):
        pairs = list(source.state_dict().items())
    elif isinstance(source, Mapping):
        pairs = list(_unwrap_checkpoint(source).items())
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {path}")
        # The C++ reader LibTorch programs use too: traced/scripted archives and torch.save files
        # (OrderedDict state dicts and checkpoints included), refusing pickled Python objects by name.
        return _C.read_weights(path)
    else:
        raise TypeError(f"weights must be a module, a state dict or a path, got {type(source).__name__}")
    return _C.strip_module_prefix(pairs)


def _cpp_root(model):
    tree = getattr(model, "_tree", None)
    if tree is None:
        raise TypeError(f"expected a torchtl model, got {type(model).__name__}; for a torch.nn model use load_state_dict")
    # Hooks do not matter for loading; a child only Python holds does (C++ would load the old one).
    return tree.cpp_for(model, hooks=False)


def load_weights(model: nn.Module, source, strict: bool = True) -> LoadResult:
    """Copies weights from ``source`` (see read_state_dict) into a torchtl model, in C++.

    Raises WeightsMismatchError listing every missing, unexpected and wrongly shaped key; with
    ``strict=False`` only wrong shapes raise, and the missing/unexpected keys are returned.
    """
    pairs = read_state_dict(source)
    try:
        missing, unexpected = _C.load_state_dict(_cpp_root(model), pairs, strict)
    except ValueError as e:
        raise WeightsMismatchError(str(e)) from None
    return LoadResult(missing, unexpected)


def load_pretrained(model: nn.Module, source, head_prefixes: tuple[str, ...]) -> None:
    """Loads ``source`` whole, except head tensors whose shape differs (another num_classes): those
    keep their fresh initialisation, with a warning naming them."""
    try:
        reinitialised, _, _ = _C.load_pretrained(_cpp_root(model), read_state_dict(source), list(head_prefixes))
    except ValueError as e:
        raise WeightsMismatchError(str(e)) from None
    if reinitialised:
        warnings.warn(f"num_classes differs from the weights: re-initialised {', '.join(reinitialised)}", stacklevel=3)


def export_traced(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor | None = None) -> str:
    """Writes the traced archive LibTorch programs load (``torch.jit.trace(...).save(path)``).

    ``model`` is a torchvision model or a torchtl one (traced through its torchvision twin, so the
    archive is exactly what torchvision would produce). Traced in eval mode on CPU.
    """
    twin = model.to_torchvision() if hasattr(model, "to_torchvision") else model
    was_training = twin.training
    twin = twin.eval().cpu()
    if example_input is None:
        example_input = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        # torch.jit.trace is deprecated, but its archives are what LibTorch programs load.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(twin, example_input, strict=False)
        traced.save(os.fspath(path))
    twin.train(was_training)
    return os.fspath(path)
