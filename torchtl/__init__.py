"""torchtl: torchvision's ResNet, FCN and DeepLabV3 in C++ (LibTorch), driven from Python."""
import importlib

__version__ = "0.1.0"
__all__ = ["augment", "data", "engine", "models", "reference", "segmentation", "load_weights", "export_traced",
           "WeightsMismatchError", "save_model", "load_model", "read_model_metadata", "Predictor", "Prediction",
           "exact_mode", "set_exact_mode", "is_exact_mode", "cpu_supports_bf16", "export", "quantize"]

# `import torchtl` stays light so that the `torchtl` command answers --help and --version without
# loading torch (seconds). The library loads on first use, torch and torchvision always before the
# extension.
_SUBMODULES = {"_C", "augment", "data", "engine", "fast_path", "model_file", "models", "pt2", "quantization",
               "reference", "segmentation", "tools", "weights"}
_WEIGHTS = {"load_weights", "export_traced", "WeightsMismatchError"}
_FAST_PATH = {"exact_mode", "set_exact_mode", "is_exact_mode", "cpu_supports_bf16"}
_MODEL_FILE = {"save_model", "load_model", "read_model_metadata"}
_PREDICT = {"Predictor", "Prediction"}  # the C++ classes themselves (csrc/predict/predictor.h)
# Functions living in a module of another name (torchtl.export is the function, not torchtl/pt2.py).
_FUNCTIONS = {"export": "torchtl.pt2", "quantize": "torchtl.quantization"}


def __getattr__(name):
    if name in _SUBMODULES:
        if name == "_C":
            import torch  # noqa: F401  (loads libtorch before the extension)
            import torchvision  # noqa: F401  (registers torchvision's image ops, the decoders' fallback without TorchCodec)
        return importlib.import_module(f"torchtl.{name}")
    if name in _WEIGHTS:
        return getattr(importlib.import_module("torchtl.weights"), name)
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    if name in _FAST_PATH:
        return getattr(importlib.import_module("torchtl.fast_path"), name)
    if name in _PREDICT:
        return getattr(__getattr__("_C"), name)
    if name in _MODEL_FILE:
        return getattr(importlib.import_module("torchtl.model_file"), name)
    raise AttributeError(f"module 'torchtl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | _WEIGHTS | _FAST_PATH | _MODEL_FILE | _PREDICT | set(_FUNCTIONS))
