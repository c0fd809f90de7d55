"""torchvision.models' ResNet family with C++ modules inside.

The builders take torchvision's arguments and return a ``torch.nn.Module`` whose state dict
equals torchvision's key for key, built with the same random draws in the same order (after
``torch.manual_seed(s)`` every tensor equals torchvision's). ``weights`` may be a torchvision
model, a state dict, a ``torch.save`` path, a traced/scripted archive path, or a torchvision
``WeightsEnum``. Which forward runs when (C++ or torchvision's Python) is described in
``torchtl._module``.
"""
from __future__ import annotations

import warnings

import torchvision
from torch import nn
from torchvision.models import resnet as _tv
from torchvision.models._utils import _ovewrite_named_param
from torchvision.ops import FrozenBatchNorm2d

from torchtl import _C
from torchtl._module import Model, _Mirror, mirror, wrap
from torchtl.weights import load_pretrained, read_state_dict, resolve_weights

__all__ = [
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]

# norm_layer values C++ can build: the class -> the norm layer C++ builds in its slots.
_NORM_LAYERS = {
    nn.BatchNorm2d: _C.NormLayer.BatchNorm2d,
    nn.SyncBatchNorm: _C.NormLayer.BatchNorm2d,  # BatchNorm2d in one process; engine.fit synchronises it (sync_bn)
    FrozenBatchNorm2d: _C.NormLayer.FrozenBatchNorm2d,
}

# Arguments torchvision's ResNet takes through its builders' **kwargs.
_RESNET_ARGUMENTS = ("num_classes", "zero_init_residual", "groups", "width_per_group",
                     "replace_stride_with_dilation", "norm_layer")


class BasicBlock(_Mirror, _tv.BasicBlock):
    """torchvision's BasicBlock over torchtl::models::BasicBlock's tensors."""

    _torchvision_class = _tv.BasicBlock

    def _finish(self):
        self.stride = self.conv1.stride[0]
        if "downsample" not in self._modules:
            self.downsample = None


class Bottleneck(_Mirror, _tv.Bottleneck):
    """torchvision's Bottleneck over torchtl::models::Bottleneck's tensors."""

    _torchvision_class = _tv.Bottleneck

    def _finish(self):
        self.stride = self.conv2.stride[0]
        if "downsample" not in self._modules:
            self.downsample = None


class ResNet(Model, _tv.ResNet):
    """torchvision.models.ResNet, run by torchtl::models::ResNet in C++."""

    _torchvision_class = _tv.ResNet

    def _finish(self):
        block = self.layer1[0]
        self.groups = block.conv2.groups if isinstance(block, Bottleneck) else 1
        self.inplanes = self.fc.in_features
        self.dilation = max(m.dilation[0] for m in self.layer4.modules() if isinstance(m, nn.Conv2d))
        self.base_width = block.conv1.out_channels // self.groups if isinstance(block, Bottleneck) else 64
        self._norm_layer = type(self.bn1)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``fc`` for ``num_classes`` (torch.nn.Linear's default initialisation), built in C++."""
        _C.reset_classifier(self._cpp_module, num_classes)
        fc_cpp = dict(self._cpp_module.named_children())["fc"]
        fc = mirror(fc_cpp, self._tree, {})
        nn.Module.__setattr__(self, "fc", fc)
        self._tree.replace(self, "fc", fc, fc_cpp)
        self._tree.edits.append(("reset_classifier", num_classes))

    def _replay_special(self, target, kind, *args):
        if kind == "reset_classifier":
            target.fc = nn.Linear(self._num_features, args[0])
        else:
            super()._replay_special(target, kind, *args)

    def to_torchvision(self) -> nn.Module:
        """The torchvision twin holding a copy of these weights (same device, dtype and mode)."""
        _, arch, kwargs = self._builder
        twin = getattr(torchvision.models, arch)(weights=None, **kwargs)
        self._replay_edits(twin)
        first = next(self.parameters())
        twin.to(device=first.device, dtype=first.dtype)
        twin.load_state_dict(self.state_dict())
        return twin.train(self.training)


_CLASSES = {"ResNet": ResNet, "BasicBlock": BasicBlock, "Bottleneck": Bottleneck}


def _norm_layer(norm_layer):
    if norm_layer is None:
        return nn.BatchNorm2d
    if norm_layer not in _NORM_LAYERS:
        raise TypeError(f"norm_layer={norm_layer!r} is not supported: torchtl builds torch.nn.BatchNorm2d, "
                        "torch.nn.SyncBatchNorm and torchvision.ops.FrozenBatchNorm2d in C++")
    return norm_layer


def _resnet(arch: str, weights, kwargs: dict) -> ResNet:
    unknown = [k for k in kwargs if k not in _RESNET_ARGUMENTS]
    if unknown:
        raise TypeError(f"{arch}() got an unexpected keyword argument '{unknown[0]}'")
    state = dict(read_state_dict(weights)) if weights is not None else None
    num_classes = kwargs.get("num_classes")
    if num_classes is None:
        head = _C.head_num_classes(list(state.items()), "fc.weight") if state is not None else None
        num_classes = 1000 if head is None else head
    zero_init_residual = bool(kwargs.get("zero_init_residual", False))
    dilation = kwargs.get("replace_stride_with_dilation")
    dilation = [False] * 3 if dilation is None else [bool(d) for d in dilation]
    norm_layer = _norm_layer(kwargs.get("norm_layer"))
    cpp = _C.resnet(arch, num_classes, zero_init_residual, dilation, kwargs.get("groups"),
                    kwargs.get("width_per_group"), _NORM_LAYERS[norm_layer])
    builder_kwargs = dict(kwargs, num_classes=num_classes, zero_init_residual=zero_init_residual,
                          replace_stride_with_dilation=dilation)
    if kwargs.get("norm_layer") is None:
        builder_kwargs.pop("norm_layer", None)
    leaf_classes = {"BatchNorm2d": nn.SyncBatchNorm} if norm_layer is nn.SyncBatchNorm else {}
    model = wrap(cpp, ResNet, _CLASSES, leaf_classes, _builder=(__name__, arch, builder_kwargs),
                 _num_features=512 * (1 if arch in ("resnet18", "resnet34") else 4))
    if state is not None:
        load_pretrained(model, state, ("fc.",))
    return model


# Per builder: torchvision's ImageNet weights (for the legacy pretrained=True) and the fixed
# groups / width_per_group its builder sets.
_BUILDERS = {
    "resnet18": ("ResNet18_Weights", {}),
    "resnet34": ("ResNet34_Weights", {}),
    "resnet50": ("ResNet50_Weights", {}),
    "resnet101": ("ResNet101_Weights", {}),
    "resnet152": ("ResNet152_Weights", {}),
    "resnext50_32x4d": ("ResNeXt50_32X4D_Weights", {"groups": 32, "width_per_group": 4}),
    "resnext101_32x8d": ("ResNeXt101_32X8D_Weights", {"groups": 32, "width_per_group": 8}),
    "resnext101_64x4d": ("ResNeXt101_64X4D_Weights", {"groups": 64, "width_per_group": 4}),
    "wide_resnet50_2": ("Wide_ResNet50_2_Weights", {"width_per_group": 128}),
    "wide_resnet101_2": ("Wide_ResNet101_2_Weights", {"width_per_group": 128}),
}


def legacy_pretrained(kwargs: dict, weights, legacy: str, new: str, default):
    """torchvision's deprecated ``pretrained=``-style argument: a warning, then ``default`` weights if true.

    (torchvision's own decorator would also turn a model or state dict passed as weights into its
    ImageNet weights, so torchtl handles only the legacy keyword.)
    """
    if legacy not in kwargs:
        return weights
    warnings.warn(f"The parameter '{legacy}' is deprecated since 0.13 and may be removed in the future, "
                  f"please use '{new}' instead.", stacklevel=3)
    if kwargs.pop(legacy):
        if weights is not None:
            raise ValueError(f"give either {legacy}=True or {new}=, not both")
        return default
    return weights


def _builder(arch: str):
    weights_enum, fixed = _BUILDERS[arch]

    def build(*, weights=None, progress: bool = True, **kwargs) -> ResNet:
        weights = legacy_pretrained(kwargs, weights, "pretrained", "weights", getattr(_tv, weights_enum).IMAGENET1K_V1)
        for name, value in fixed.items():
            _ovewrite_named_param(kwargs, name, value)
        return _resnet(arch, resolve_weights(weights, getattr(_tv, weights_enum)), kwargs)

    build.__name__ = build.__qualname__ = arch
    build.__doc__ = (
        f"torchvision.models.{arch} in C++.\n\n"
        "Args:\n"
        "    weights: a torchvision model or WeightsEnum (or its name: \"DEFAULT\", \"IMAGENET1K_V1\",\n"
        f"        \"{weights_enum}.IMAGENET1K_V1\"; read from torch.hub's cache, never downloaded), a state dict,\n"
        "        a torch.save path or a traced archive path.\n"
        "    progress: accepted for torchvision compatibility.\n"
        "    **kwargs: torchvision's ResNet arguments: num_classes (defaults to the weights' head, else 1000; a\n"
        "        different size than the weights re-initialises fc only, with a warning), zero_init_residual,\n"
        "        groups, width_per_group, replace_stride_with_dilation (three bools for layer2..layer4), and\n"
        "        norm_layer (torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm or torchvision.ops.FrozenBatchNorm2d).\n"
        "        Anything else raises TypeError.\n"
    )
    return build


resnet18 = _builder("resnet18")
resnet34 = _builder("resnet34")
resnet50 = _builder("resnet50")
resnet101 = _builder("resnet101")
resnet152 = _builder("resnet152")
resnext50_32x4d = _builder("resnext50_32x4d")
resnext101_32x8d = _builder("resnext101_32x8d")
resnext101_64x4d = _builder("resnext101_64x4d")
wide_resnet50_2 = _builder("wide_resnet50_2")
wide_resnet101_2 = _builder("wide_resnet101_2")
