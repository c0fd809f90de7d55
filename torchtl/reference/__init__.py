"""The pure-PyTorch twins of torchtl.engine's loops (the train/test functions of PyTorch's transfer-learning tutorial and the
torchvision references' recipes), with the same signatures and return values, so that every
comparison can hold the C++ path and the Python path side by side. They train any
``torch.nn.Module`` (a torchvision model, or a torchtl one) and read a torchtl DataLoader or any
iterable of (images, targets) batches.
"""
from torchtl.reference.loops import evaluate, fit, lr_factor

__all__ = ["fit", "evaluate", "lr_factor"]
