"""Python's half of the compiled-package tests, run by ctest when CMake is given TORCHTL_TEST_PYTHON.

    python_package.py write DIR   torchtl.export's package of a 3-class resnet18 at 64 px
                                  (resnet18.pt2), the same model as a model file (resnet18.pt), an
                                  image (image.png), and torchtl's outputs on random inputs
                                  (expected.pt: input, output, input1, output1), for
                                  test_compiled_model.cpp to run and compare

One package serves every C++ test that needs one: an AOTInductor compile takes a minute.
"""
import os
import sys

import torch
from torchvision.io import write_png

import torchtl

CLASSES = ["circle", "square", "triangle"]
TRANSFORM = {"resize_size": 64, "crop_size": 64, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
             "std": [0.229, 0.224, 0.225]}


def write(directory):
    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=3).eval()
    torchtl.export(model, os.path.join(directory, "resnet18.pt2"), example_size=64, classes=CLASSES,
                   transform=TRANSFORM, speed_repeats=0)
    torchtl.save_model(model, os.path.join(directory, "resnet18.pt"), classes=CLASSES, transform=TRANSFORM)
    write_png(torch.randint(0, 256, (3, 80, 96), dtype=torch.uint8), os.path.join(directory, "image.png"))
    x, x1 = torch.randn(4, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = {"input": x, "output": model(x), "input1": x1, "output1": model(x1)}
    torch.save(expected, os.path.join(directory, "expected.pt"))
    print(f"wrote resnet18.pt2, resnet18.pt, image.png and expected.pt to {directory}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "write":
        sys.exit(__doc__)
    write(sys.argv[2])
