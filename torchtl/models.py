"""torchvision.models' ResNet family with C++ modules inside.

The builders take torchvision's arguments and return a ``torch.nn.Module`` whose state dict
equals torchvision's key for key. ``weights`` may be a torchvision model, a state dict, a
``torch.save`` path, a traced/scripted archive path, or a torchvision ``WeightsEnum``.
"""
from __future__ import annotations

import torchvision
from torch import nn

from torchtl import _C
from torchtl._module import Model, wrap
from torchtl.weights import load_pretrained, read_state_dict

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


class ResNet(Model):
    """torchvision.models.ResNet, run by torchtl::models::ResNet in C++."""

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``fc`` for ``num_classes`` (torch.nn.Linear's default initialisation), built in C++."""
        _C.reset_classifier(self._cpp, num_classes)
        fc_cpp = dict(self._cpp.named_children())["fc"]
        from torchtl._module import mirror

        nn.Module.__setattr__(self, "fc", mirror(fc_cpp, self._tree))
        self._tree.edits.append(("reset_classifier", num_classes))
        self._tree.invalidate()

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


def _resnet(arch: str, weights, num_classes: int | None, zero_init_residual: bool,
            replace_stride_with_dilation) -> ResNet:
    state = dict(read_state_dict(weights)) if weights is not None else None
    if num_classes is None:
        head = state.get("fc.weight") if state is not None else None
        num_classes = int(head.shape[0]) if head is not None else 1000
    dilation = list(replace_stride_with_dilation) if replace_stride_with_dilation is not None else [False] * 3
    cpp = _C.resnet(arch, num_classes, zero_init_residual, dilation)
    kwargs = dict(num_classes=num_classes, zero_init_residual=zero_init_residual, replace_stride_with_dilation=dilation)
    model = wrap(cpp, ResNet, _builder=(__name__, arch, kwargs),
                 _num_features=512 * (1 if arch in ("resnet18", "resnet34") else 4))
    if state is not None:
        load_pretrained(model, state, ("fc.",))
    return model


def _builder(arch: str):
    def build(*, weights=None, progress: bool = True, num_classes: int | None = None,
              zero_init_residual: bool = False, replace_stride_with_dilation=None) -> ResNet:
        return _resnet(arch, weights, num_classes, zero_init_residual, replace_stride_with_dilation)

    build.__name__ = build.__qualname__ = arch
    build.__doc__ = (
        f"torchvision.models.{arch} in C++.\n\n"
        "Args:\n"
        "    weights: a torchvision model or WeightsEnum, a state dict, a torch.save path or a traced archive path.\n"
        "    progress: accepted for torchvision compatibility.\n"
        "    num_classes: classifier size; defaults to the weights' head, else 1000. A different size than the\n"
        "        weights re-initialises fc only, with a warning.\n"
        "    zero_init_residual: zero the last BatchNorm of each residual branch.\n"
        "    replace_stride_with_dilation: three bools for layer2..layer4.\n"
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
