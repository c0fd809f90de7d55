"""torchvision.transforms.v2's augmentation recipes in C++: TrivialAugmentWide, RandAugment,
AutoAugment (ImageNet policy), AugMix and RandomErasing.

Each reproduces v2 on uint8 3 x H x W tensors draw for draw: ``t(image, seed=s)`` returns what the
v2 transform returns after ``torch.manual_seed(s)``. ``interpolation`` is ``"nearest"`` or
``"bilinear"`` (what v2's grid sampling takes on tensors); ``fill`` is v2's default (zeros).
"""
from __future__ import annotations

from typing import Sequence

from torchtl import _C

__all__ = [
    "trivial_augment_wide",
    "rand_augment",
    "auto_augment",
    "aug_mix",
    "random_erasing",
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
