"""torchtl.quantize: an int8 AOTInductor package calibrated on a map file, checked against fp32.

One int8 compile for the module (AOTInductor takes ~45 s or more); the refusal reuses its files.
"""
import json

import pytest
import torch

import torchtl
from torchtl import pt2
from torchtl.tools import demo_data

SIZE = 32
CLASSES = ("circle", "square", "triangle")
TRANSFORM = {"resize_size": SIZE, "crop_size": SIZE, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
             "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    maps = demo_data.make_classification_set(root / "shapes", CLASSES, train_per_class=4, val_per_class=2, size=SIZE,
                                             seed=0)
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=3).eval()
    compiled = []
    real_compile = pt2._compile

    def compile_once(*args, **kwargs):
        compiled.append(real_compile(*args, **kwargs))
        return compiled[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pt2, "_compile", compile_once)
        record = torchtl.quantize(model, maps["train"], root / "int8.pt2", check_map_file=maps["val"],
                                  transform=TRANSFORM, min_agreement=0.0, speed_repeats=2)
    return model, maps, root, record, compiled[0]


def test_the_int8_package_runs_and_stays_near_fp32(int8):
    model, _, root, record, _ = int8
    assert record["accepted"] and record["precision"] == "int8"
    assert record["calibration"]["images"] == 12 and record["inputs"] == {"real": [6, 3, SIZE, SIZE]}
    d = record["checks"]["real"]["against_torchtl"]
    # int8 moves the logits by a few percent of their range, not by their whole range.
    assert 0 < d["relative_error"] < 0.2, d
    assert {"package_vs_torchtl", "package_vs_torchvision"} <= set(record["speed"])
    meta = pt2.read_package(root / "int8.pt2")["model"]
    assert meta["transform"] == TRANSFORM and record["input_size"] == [SIZE, SIZE]
    compiled = torch._inductor.aoti_load_package(str(root / "int8.pt2"))
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        got, want = compiled(x), model(x)
    assert got.shape == want.shape and (got - want).abs().max() < 0.2 * want.abs().max()


def test_int8_below_the_agreement_asked_is_refused(int8, monkeypatch):
    model, maps, root, _, files = int8
    monkeypatch.setattr(pt2, "_compile", lambda *args, **kwargs: files)
    with pytest.raises(pt2.ExportParityError, match=r"agrees with torchtl's fp32 top-1 on .* of the 6 images, below "
                                                    r"the 101.0% asked"):
        torchtl.quantize(model, maps["train"], root / "refused.pt2", check_map_file=maps["val"],
                         transform=TRANSFORM, min_agreement=1.01, speed_repeats=0)
    assert not (root / "refused.pt2").exists()
    assert json.loads((root / "refused.parity.json").read_text())["accepted"] is False


def test_quantize_refuses_segmentation_and_missing_maps(tmp_path):
    with pytest.raises(ValueError, match="int8 packages of classification models; fcn_resnet50 is a segmentation"):
        torchtl.quantize(torchtl.segmentation.fcn_resnet50(num_classes=2), tmp_path / "m.txt", tmp_path / "q.pt2")
    with pytest.raises(FileNotFoundError, match="map file not found"):
        torchtl.quantize(torchtl.models.resnet18(), tmp_path / "missing.txt", tmp_path / "q.pt2")
