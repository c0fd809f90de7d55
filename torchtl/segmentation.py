"""torchvision.models.segmentation's FCN and DeepLabV3 with C++ modules inside.

Same signatures as torchvision (num_classes, aux_loss, weights, weights_backbone) and the same
state dict keys (backbone.*, classifier.*, aux_classifier.*). Nothing is downloaded:
``weights_backbone`` defaults to None, not to ImageNet weights. Both ``weights`` and
``weights_backbone`` accept every source torchtl.load_weights accepts, traced archives included.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torchvision
from torch import nn

from torchtl import _C
from torchtl._module import CppModule, Model, wrap
from torchtl.weights import WeightsMismatchError, load_pretrained, read_state_dict

__all__ = ["deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50", "fcn_resnet101"]

_HEADS = ("classifier.4.", "aux_classifier.4.")


class IntermediateLayerGetter(CppModule):
    """torchvision.models._utils.IntermediateLayerGetter; returns an OrderedDict of features."""

    def forward(self, input):
        self._tree.sync_training()
        return OrderedDict(_C.forward_dict(self._cpp, input))


class SegmentationModel(Model):
    """torchvision's DeepLabV3 / FCN: returns OrderedDict(out=..., [aux=...]) at the input size."""

    def forward(self, input):
        self._tree.sync_training()
        return OrderedDict(_C.forward_dict(self._cpp, input))

    def to_torchvision(self) -> nn.Module:
        _, function, kwargs = self._builder
        twin = getattr(torchvision.models.segmentation, function)(
            weights=None, weights_backbone=None, num_classes=kwargs["num_classes"], aux_loss=kwargs["aux_loss"])
        self._replay_edits(twin)
        first = next(self.parameters())
        twin.to(device=first.device, dtype=first.dtype)
        twin.load_state_dict(self.state_dict())
        return twin.train(self.training)


def _load_backbone(model: SegmentationModel, source) -> None:
    # A classification ResNet's weights: everything but its head feeds the dilated backbone.
    pairs = [(k, v) for k, v in read_state_dict(source) if not k.startswith("fc.")]
    try:
        _C.load_state_dict(model.backbone._cpp, pairs, True)
    except ValueError as e:
        raise WeightsMismatchError(f"weights_backbone: {e}") from None


def _segmentation(kind: str, backbone: str, weights, num_classes, aux_loss, weights_backbone) -> SegmentationModel:
    state = None
    if weights is not None:
        state = dict(read_state_dict(weights))
        if num_classes is None:
            head = state.get("classifier.4.weight")
            num_classes = int(head.shape[0]) if head is not None else 21
        has_aux = any(k.startswith("aux_classifier.") for k in state)
        if aux_loss is None:
            aux_loss = has_aux
        elif not aux_loss and has_aux:
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    num_classes = 21 if num_classes is None else num_classes
    aux_loss = bool(aux_loss)
    cpp = (_C.deeplabv3_resnet if kind == "deeplabv3" else _C.fcn_resnet)(backbone, num_classes, aux_loss)
    function = f"{kind}_{backbone}"
    model = wrap(cpp, SegmentationModel, {"IntermediateLayerGetter": IntermediateLayerGetter},
                 _builder=(__name__, function, dict(num_classes=num_classes, aux_loss=aux_loss)))
    if state is not None:
        if weights_backbone is not None:
            warnings.warn("weights given: weights_backbone is ignored, as in torchvision", stacklevel=3)
        load_pretrained(model, state, _HEADS)
    elif weights_backbone is not None:
        _load_backbone(model, weights_backbone)
    return model


def _builder(kind: str, backbone: str):
    def build(*, weights=None, progress: bool = True, num_classes: int | None = None, aux_loss: bool | None = None,
              weights_backbone=None) -> SegmentationModel:
        return _segmentation(kind, backbone, weights, num_classes, aux_loss, weights_backbone)

    build.__name__ = build.__qualname__ = f"{kind}_{backbone}"
    build.__doc__ = (
        f"torchvision.models.segmentation.{kind}_{backbone} in C++ (dilated {backbone} backbone).\n\n"
        "Args:\n"
        "    weights: the whole model's weights (any torchtl weight source). num_classes and aux_loss default to\n"
        "        the weights'; a different num_classes re-initialises classifier.4 / aux_classifier.4 with a warning.\n"
        "    progress: accepted for torchvision compatibility.\n"
        "    num_classes: output classes (default 21).\n"
        "    aux_loss: add the FCNHead on layer3 that returns 'aux'.\n"
        f"    weights_backbone: a {backbone} classification model's weights (its fc is ignored).\n"
    )
    return build


deeplabv3_resnet50 = _builder("deeplabv3", "resnet50")
deeplabv3_resnet101 = _builder("deeplabv3", "resnet101")
fcn_resnet50 = _builder("fcn", "resnet50")
fcn_resnet101 = _builder("fcn", "resnet101")
