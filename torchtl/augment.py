"""torchvision.transforms.v2's augmentation recipes in C++: TrivialAugmentWide, RandAugment,
AutoAugment (ImageNet policy), AugMix and RandomErasing on images, MixUp and CutMix on batches.

Each reproduces v2 on uint8 3 x H x W tensors draw for draw: ``t(image, seed=s)`` returns what the
v2 transform returns after ``torch.manual_seed(s)`` (for batches, ``t(images, labels, seed=s)``). ``interpolation`` is ``"nearest"`` or
``"bilinear"`` (what v2's grid sampling takes on tensors); ``fill`` is v2's default (zeros).
"""
from __future__ import annotations

from typing import Optional, Sequence

from torchtl import _C

__all__ = [
    "trivial_augment_wide",
    "rand_augment",
    "auto_augment",
    "aug_mix",
    "random_erasing",
    "mixup",
    "cutmix",
    "mixup_cutmix",
]


def trivial_augment_wide(num_magnitude_bins: int = 31, interpolation: str = "nearest"):
    """``v2.TrivialAugmentWide(num_magnitude_bins, interpolation)``."""
    return _C.data.trivial_augment_wide(num_magnitude_bins=int(num_magnitude_bins), interpolation=str(interpolation))


def rand_augment(num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31, interpolation: str = "nearest"):
    """``v2.RandAugment(num_ops, magnitude, num_magnitude_bins, interpolation)``."""
    return _C.data.rand_augment(num_ops=int(num_ops), magnitude=int(magnitude),
                                num_magnitude_bins=int(num_magnitude_bins), interpolation=str(interpolation))


def auto_augment(policy: str = "imagenet", interpolation: str = "nearest"):
    """``v2.AutoAugment(AutoAugmentPolicy(policy), interpolation)``; the ImageNet policy."""
    return _C.data.auto_augment(policy=str(policy), interpolation=str(interpolation))


def aug_mix(severity: int = 3, mixture_width: int = 3, chain_depth: int = -1, alpha: float = 1.0,
            all_ops: bool = True, interpolation: str = "bilinear"):
    """``v2.AugMix(severity, mixture_width, chain_depth, alpha, all_ops, interpolation)``."""
    return _C.data.aug_mix(severity=int(severity), mixture_width=int(mixture_width), chain_depth=int(chain_depth),
                           alpha=float(alpha), all_ops=bool(all_ops), interpolation=str(interpolation))


def random_erasing(p: float = 0.5, scale: Sequence[float] = (0.02, 0.33), ratio: Sequence[float] = (0.3, 3.3),
                   value: float | Sequence[float] = 0.0):
    """``v2.RandomErasing(p, scale, ratio, value)`` on any dtype (the references erase after Normalize)."""
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    return _C.data.RandomErasing(p=float(p), scale=[float(s) for s in scale], ratio=[float(r) for r in ratio],
                                 value=values)


def mixup(images, labels, alpha: float = 1.0, num_classes: Optional[int] = None, seed: int = 0):
    """``v2.MixUp(alpha, num_classes)(images, labels)``: returns ``(images, N x num_classes labels)``."""
    return _C.data.mixup(images, labels, alpha=float(alpha), num_classes=num_classes, seed=seed)


def cutmix(images, labels, alpha: float = 1.0, num_classes: Optional[int] = None, seed: int = 0):
    """``v2.CutMix(alpha, num_classes)(images, labels)``: returns ``(images, N x num_classes labels)``."""
    return _C.data.cutmix(images, labels, alpha=float(alpha), num_classes=num_classes, seed=seed)


def mixup_cutmix(mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, num_classes: Optional[int] = None):
    """The references' ``get_mixup_cutmix``: ``v2.RandomChoice`` over ``MixUp(mixup_alpha)`` and
    ``CutMix(cutmix_alpha)``, those with a positive alpha (p = 0.5 each when both are on).

    Call it on a batch: ``t(images, labels, seed=0)``; ``t.enabled`` is False when both alphas are 0.
    """
    return _C.data.MixUpCutMix(mixup_alpha=float(mixup_alpha), cutmix_alpha=float(cutmix_alpha),
                               num_classes=num_classes)
