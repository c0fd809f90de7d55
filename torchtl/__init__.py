"""torchtl: torchvision's ResNet, FCN and DeepLabV3 in C++ (LibTorch), driven from Python."""
import torch  # noqa: F401  (loads libtorch before the extension)
import torchvision  # noqa: F401  (registers torchvision's image ops, the decoders' fallback without TorchCodec)

from torchtl import _C  # noqa: F401
from torchtl import data, engine, models, reference, segmentation
from torchtl.weights import WeightsMismatchError, export_traced, load_weights

__version__ = "0.1.0"
__all__ = ["data", "engine", "models", "reference", "segmentation", "load_weights", "export_traced",
           "WeightsMismatchError"]
