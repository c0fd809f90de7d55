"""Python's half of the C++ weights tests, run by ctest when CMake is given TORCHTL_TEST_PYTHON.

    python_weights.py write DIR   torchvision resnet18 as a traced archive (the format LibTorch programs load) and
                                  as a torch.save'd state dict, for test_traced_archive.cpp to read
    python_weights.py check DIR   opens what test_traced_archive.cpp wrote (cpp_resnet18.pt with
                                  an input and the C++ output) in torchvision, and compares outputs
    python_weights.py best PATH...  opens each best.pt that examples/cpp/transfer_learning wrote (a
                                  2-class resnet18) in torchvision, strictly
"""
import os
import sys
import warnings

import torch
import torchvision


def write(directory):
    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    # Non-default BatchNorm statistics, so a loader that skipped buffers would be caught.
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64))
    traced.save(os.path.join(directory, "resnet18_traced.pt"))
    torch.save(model.state_dict(), os.path.join(directory, "resnet18_state_dict.pt"))
    # A training script's checkpoint: the state dict beside optimizer state (ints, floats, bools,
    # None, lists, int-keyed dicts, momentum tensors) and a half-precision copy of a weight.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 3,
        "best_acc": 0.875,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "extra": [None, True, -5, 2**40, "text", model.conv1.weight.half()],
    }
    torch.save(checkpoint, os.path.join(directory, "resnet18_checkpoint.pt"))
    print(f"wrote resnet18_traced.pt, resnet18_state_dict.pt and resnet18_checkpoint.pt to {directory}")


def check(directory):
    weights = torch.load(os.path.join(directory, "cpp_resnet18.pt"))
    x = torch.load(os.path.join(directory, "cpp_input.pt"))
    expected = torch.load(os.path.join(directory, "cpp_output.pt"))
    model = torchvision.models.resnet18(num_classes=expected.shape[1])
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        got = model(x)
    error = (got - expected).abs().max().item()
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        sys.exit(f"torchvision's output differs from the C++ output by up to {error}")
    print(f"torchvision loaded the C++ weights; outputs agree (max abs difference {error:.2e})")


def best(*paths):
    for path in paths:
        model = torchvision.models.resnet18(num_classes=2)
        model.load_state_dict(torch.load(path))
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 32, 32))
        assert out.shape == (1, 2) and torch.isfinite(out).all(), out
        print(f"torchvision's resnet18(num_classes=2) loaded {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["best"] and len(sys.argv) > 2:
        best(*sys.argv[2:])
    elif len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    else:
        {"write": write, "check": check}[sys.argv[1]](sys.argv[2])
