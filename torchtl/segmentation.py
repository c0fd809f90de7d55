"""torchvision.models.segmentation's FCN and DeepLabV3 with C++ modules inside.

Same signatures as torchvision (num_classes, aux_loss, weights, weights_backbone) and the same
state dict keys (backbone.*, classifier.*, aux_classifier.*), built with torchvision's random
draws in torchvision's order. Nothing is downloaded: ``weights_backbone`` defaults to None, not to
ImageNet weights. Both ``weights`` and ``weights_backbone`` accept every source
torchtl.load_weights accepts, traced archives included. The modules are torchvision's classes
(``DeepLabV3``, ``IntermediateLayerGetter``, ``DeepLabHead``, ``ASPP``, ...) over the C++ tensors;
``torchtl._module`` says when their forward runs in C++ and when in Python.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torchvision
from torch import nn
from torchvision.models import _utils as _tv_utils
from torchvision.models.segmentation import deeplabv3 as _tv_deeplabv3
from torchvision.models.segmentation import fcn as _tv_fcn

from torchtl import _C
from torchtl._module import Model, _Mirror, wrap
from torchtl.models import _CLASSES as _RESNET_CLASSES
from torchtl.models import legacy_pretrained
from torchtl.weights import WeightsMismatchError, load_pretrained, read_state_dict, resolve_weights

# torchvision's builders; smp's architectures (Unet, FPN, ...) are reached through __getattr__ below
# and listed in torchtl.segmentation_models.__all__.
__all__ = ["deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50", "fcn_resnet101"]

_HEADS = ("classifier.4.", "aux_classifier.4.")


class _DictForward:
    """C++ forward of a module that returns torchvision's OrderedDict of features."""

    def _cpp_forward(self, input):
        return OrderedDict(_C.forward_dict(self._cpp_module, input))


class IntermediateLayerGetter(_DictForward, _Mirror, _tv_utils.IntermediateLayerGetter):
    """torchvision.models._utils.IntermediateLayerGetter; returns an OrderedDict of features."""

    _torchvision_class = _tv_utils.IntermediateLayerGetter
    _forward_options = ("return_layers",)


class ASPPConv(_Mirror, _tv_deeplabv3.ASPPConv):
    _torchvision_class = _tv_deeplabv3.ASPPConv


class ASPPPooling(_Mirror, _tv_deeplabv3.ASPPPooling):
    _torchvision_class = _tv_deeplabv3.ASPPPooling

    def _finish(self):
        self[0].output_size = 1  # torchvision's spelling of the (1, 1) C++ holds


class ASPP(_Mirror, _tv_deeplabv3.ASPP):
    _torchvision_class = _tv_deeplabv3.ASPP


class DeepLabHead(_Mirror, _tv_deeplabv3.DeepLabHead):
    _torchvision_class = _tv_deeplabv3.DeepLabHead


class FCNHead(_Mirror, _tv_fcn.FCNHead):
    _torchvision_class = _tv_fcn.FCNHead


class _SegmentationModel(_DictForward, Model):
    """torchvision's DeepLabV3 / FCN: returns OrderedDict(out=..., [aux=...]) at the input size."""

    def _finish(self):
        if "aux_classifier" not in self._modules:
            self.aux_classifier = None
        return_layers = {"layer4": "out"}
        if self.aux_classifier is not None:
            return_layers["layer3"] = "aux"
        self.backbone.return_layers = return_layers

    def to_torchvision(self) -> nn.Module:
        _, function, kwargs = self._builder
        twin = getattr(torchvision.models.segmentation, function)(
            weights=None, weights_backbone=None, num_classes=kwargs["num_classes"], aux_loss=kwargs["aux_loss"])
        self._replay_edits(twin)
        first = next(self.parameters())
        twin.to(device=first.device, dtype=first.dtype)
        twin.load_state_dict(self.state_dict())
        return twin.train(self.training)


class DeepLabV3(_SegmentationModel, _tv_deeplabv3.DeepLabV3):
    _torchvision_class = _tv_deeplabv3.DeepLabV3


class FCN(_SegmentationModel, _tv_fcn.FCN):
    _torchvision_class = _tv_fcn.FCN


# Kept under its old name: the C++ root of either model.
SegmentationModel = _SegmentationModel

_CLASSES = {
    **_RESNET_CLASSES,
    "IntermediateLayerGetter": IntermediateLayerGetter,
    "ASPPConv": ASPPConv,
    "ASPPPooling": ASPPPooling,
    "ASPP": ASPP,
    "DeepLabHead": DeepLabHead,
    "FCNHead": FCNHead,
}


def _load_backbone(model: _SegmentationModel, source) -> None:
    # A classification ResNet's weights: everything but its head feeds the dilated backbone.
    pairs = [(k, v) for k, v in read_state_dict(source) if not k.startswith("fc.")]
    try:
        _C.load_state_dict(model.backbone._cpp_module, pairs, True)
    except ValueError as e:
        raise WeightsMismatchError(f"weights_backbone: {e}") from None


def _segmentation(kind: str, backbone: str, weights, num_classes, aux_loss, weights_backbone) -> _SegmentationModel:
    state = None
    if weights is not None:
        state = dict(read_state_dict(weights))
        if num_classes is None:
            num_classes = _C.head_num_classes(list(state.items()), "classifier.4.weight")
        has_aux = any(k.startswith("aux_classifier.") for k in state)
        if aux_loss is None:
            aux_loss = has_aux
        elif not aux_loss and has_aux:
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    num_classes = 21 if num_classes is None else num_classes
    aux_loss = bool(aux_loss)
    cpp = (_C.deeplabv3_resnet if kind == "deeplabv3" else _C.fcn_resnet)(backbone, num_classes, aux_loss)
    function = f"{kind}_{backbone}"
    root = DeepLabV3 if kind == "deeplabv3" else FCN
    model = wrap(cpp, root, _CLASSES, _builder=(__name__, function, dict(num_classes=num_classes, aux_loss=aux_loss)))
    if state is not None:
        if weights_backbone is not None:
            warnings.warn("weights given: weights_backbone is ignored, as in torchvision", stacklevel=3)
        load_pretrained(model, state, _HEADS)
    elif weights_backbone is not None:
        _load_backbone(model, weights_backbone)
    return model


def _builder(kind: str, backbone: str):
    tv_builder = getattr(torchvision.models.segmentation, f"{kind}_{backbone}")
    module = _tv_deeplabv3 if kind == "deeplabv3" else _tv_fcn
    weights_enum = getattr(module, f"{'DeepLabV3' if kind == 'deeplabv3' else 'FCN'}_ResNet{backbone[6:]}_Weights")
    backbone_enum = getattr(torchvision.models, f"ResNet{backbone[6:]}_Weights")

    def build(*, weights=None, progress: bool = True, num_classes: int | None = None, aux_loss: bool | None = None,
              weights_backbone=None, **kwargs) -> _SegmentationModel:
        weights = legacy_pretrained(kwargs, weights, "pretrained", "weights", weights_enum.COCO_WITH_VOC_LABELS_V1)
        weights_backbone = legacy_pretrained(kwargs, weights_backbone, "pretrained_backbone", "weights_backbone",
                                             backbone_enum.IMAGENET1K_V1)
        if kwargs:
            # torchvision accepts and ignores these; torchtl says so instead of ignoring them.
            raise TypeError(f"{kind}_{backbone}() got an unexpected keyword argument '{next(iter(kwargs))}' "
                            f"(torchvision's {tv_builder.__name__} ignores it; torchtl does not ignore arguments)")
        return _segmentation(kind, backbone, resolve_weights(weights, weights_enum), num_classes, aux_loss,
                             resolve_weights(weights_backbone, backbone_enum))

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


def __getattr__(name):
    # segmentation_models_pytorch's architectures (torchtl/segmentation_models.py) under smp's class
    # names, imported on first use: that module builds on the classes above.
    from torchtl import segmentation_models

    if name in segmentation_models.ARCHITECTURES:
        return getattr(segmentation_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
