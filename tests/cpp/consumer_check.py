"""examples/cpp/consumer, a separate CMake project, builds against a fresh install of torchtl and predicts as Python does.

usage: consumer_check.py CMAKE BUILD_DIR SOURCE_DIR WORK_DIR

Installs BUILD_DIR (already built: nothing of torchtl compiles again) into WORK_DIR/prefix,
configures and builds the consumer there with only find_package(torchtl), trains a model with
Python's engine.fit on JPEG and PNG files, and compares the consumer's lines with torchtl.Predictor's
and plain torchvision's on those files.
"""
import os
import shutil
import subprocess
import sys

import torch
from torchvision.io import write_jpeg, write_png

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torchtl  # noqa: E402
from torchtl import data  # noqa: E402
from predict_reference import python_classify  # noqa: E402


def run(*argv, **kwargs):
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True, **kwargs).stdout


def train(work):
    """One epoch of engine.fit on 32 px JPEG and PNG images of two colours; returns best.pt and the images."""
    g = torch.Generator().manual_seed(0)
    lines, images = [], []
    for i in range(8):
        img = (torch.rand(3, 36 + i, 44, generator=g) * 90).to(torch.uint8)
        img[2 * (i % 2)] += 150
        path = os.path.join(work, f"img{i}." + ("jpg" if i < 4 else "png"))
        (write_jpeg if i < 4 else write_png)(img, path)
        lines.append(f"{os.path.basename(path)}\t{i % 2}")
        images.append(path)
    with open(os.path.join(work, "train.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(work, "train_classes.txt"), "w") as f:
        f.write("red\nblue\n")
    ds = data.MapDataset(os.path.join(work, "train.txt"),
                         transform=data.classification_transform(train=False, size=32, resize_size=36))
    loader = data.DataLoader(ds, batch_size=4, num_workers=1)
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=2)
    torchtl.engine.fit(model, loader, loader, lr=0.05, epochs=1, device="cpu", progress=False,
                       checkpoint_dir=os.path.join(work, "run"))
    return os.path.join(work, "run", "best.pt"), images


def main(cmake, build_dir, source_dir, work):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    prefix = os.path.join(work, "prefix")
    run(cmake, "--install", build_dir, "--prefix", prefix)
    assert os.path.isfile(os.path.join(prefix, "include", "torchtl", "torchtl.h"))
    assert os.path.isfile(os.path.join(prefix, "lib", "cmake", "torchtl", "torchtlConfigVersion.cmake"))
    consumer = os.path.join(work, "consumer")
    launcher = shutil.which("ccache")
    run(cmake, "-S", os.path.join(source_dir, "examples", "cpp", "consumer"), "-B", consumer,
        f"-DCMAKE_PREFIX_PATH={prefix};{torch.utils.cmake_prefix_path}", "-DCMAKE_BUILD_TYPE=Release",
        *([f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}"] if launcher else []))
    run(cmake, "--build", consumer)
    best, images = train(work)
    # As a user runs it: no Python anywhere in its environment.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH")}
    lines = run(os.path.join(consumer, "app"), best, *images, env=env)
    got = [line.rsplit(" ", 2) for line in lines.splitlines()]
    values, indices = python_classify(best, images, topk=2)
    predictor = torchtl.Predictor(best, device="cpu").classify(images, topk=2)
    classes = torchtl.read_model_metadata(best)["classes"]
    assert len(got) == 2 * len(images), lines
    for row, path in enumerate(images):
        mine = got[2 * row: 2 * row + 2]
        assert [m[0] for m in mine] == [path, path], mine
        assert [m[1] for m in mine] == [classes[i] for i in indices[row].tolist()], (mine, indices[row])
        assert [m[1] for m in mine] == [p.label for p in predictor[row]]
        probs = torch.tensor([float(m[2]) for m in mine])
        # The consumer prints 6 significant digits, on the fast path.
        torch.testing.assert_close(probs, values[row].double().float(), rtol=1e-3, atol=1e-5)
    print(f"consumer agrees with Python on {len(images)} JPEG and PNG files")


if __name__ == "__main__":
    main(*sys.argv[1:])
