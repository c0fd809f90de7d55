"""torchtl.export: AOTInductor packages checked against torchtl and torchvision, and refused when they stray.

One package is compiled for the whole module (an AOTInductor compile takes ~45 s or more); the
other builders go through torch.export only, and the refusal is tested on doctored records.
"""
import json
import math
import os

import pytest
import torch

import torchtl
from torchtl import pt2
from torchtl.tools import cli, demo_data

SIZE = 64
CLASSES = ["circle", "square", "triangle"]
TRANSFORM = {"resize_size": SIZE, "crop_size": SIZE, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
             "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt2")
    demo_data.make_classification_set(root / "shapes", ("circle", "square", "triangle"), train_per_class=1,
                                      val_per_class=2, size=48, seed=0)
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=3).eval()
    path = root / "resnet18.pt2"
    record = torchtl.export(model, path, example_size=SIZE, images=root / "shapes" / "val",
                            classes=CLASSES, transform=TRANSFORM, speed_repeats=2)
    return model, path, record


def test_the_package_matches_torchtl_and_torchvision(package):
    _, path, record = package
    assert record["accepted"] and record["refused_because"] is None
    assert record["inputs"] == {"random": [3, 3, SIZE, SIZE], "real": [6, 3, SIZE, SIZE]}
    for inputs in ("random", "real"):
        for against in ("against_torchtl", "against_torchvision"):
            d = record["checks"][inputs][against]
            assert d["relative_error"] < 1e-5 and d["top1_agreement"] == 1.0, (inputs, against, d)
    speed = record["speed"]
    assert speed["package_ms"] > 0 and speed["package_vs_torchtl"] > 0 and speed["package_vs_torchvision"] > 0


def test_the_record_lies_inside_the_package_and_beside_it(package):
    _, path, record = package
    inside = pt2.read_package(path)
    beside = json.loads((path.parent / "resnet18.parity.json").read_text())
    assert inside["parity"] == beside == json.loads(json.dumps(record))
    meta = inside["model"]
    assert meta["builder"] == "resnet18" and meta["task"] == "classification"
    assert meta["classes"] == CLASSES and meta["builder_args"]["num_classes"] == 3 and meta["transform"] == TRANSFORM
    assert meta == torchtl.read_model_metadata(path)  # the very record of a model file
    assert {k: record[k] for k in ("input_size", "dynamic_batch", "device", "precision", "output")} == {
        "input_size": [SIZE, SIZE], "dynamic_batch": True, "device": "cpu", "precision": "float32", "output": "logits"}


def test_the_package_takes_any_batch_size(package):
    model, path, _ = package
    compiled = torch._inductor.aoti_load_package(str(path))
    for batch in (1, 5):
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_the_predictor_runs_a_package_as_it_runs_the_model_file(package, tmp_path):
    model, path, _ = package
    model_file = torchtl.save_model(model, tmp_path / "resnet18.pt", classes=CLASSES, transform=TRANSFORM)
    images = sorted(str(p) for p in (path.parent / "shapes" / "val").rglob("*.png"))
    from_file = torchtl.Predictor(model_file, device="cpu").classify(images, topk=3)
    from_package = torchtl.Predictor(str(path)).classify(images, topk=3)
    for a, b in zip(from_file, from_package):
        assert [p.label for p in a] == [p.label for p in b]
        assert [p.probability for p in a] == pytest.approx([p.probability for p in b], abs=1e-5)


def test_a_straying_package_is_refused_and_names_the_gap(package, tmp_path):
    _, _, record = package
    doctored = json.loads(json.dumps(record))
    d = doctored["checks"]["real"]["against_torchvision"]
    d.update(max_abs_error=0.5, relative_error=0.5 / d["max_abs_reference"])
    gap = pt2.check_parity(doctored)
    assert gap.startswith("on real inputs it strays from torchvision by 0.5 on outputs up to") and "tolerance 0.001" in gap
    assert pt2.check_parity(record) is None
    # An earlier package at the path goes: it must not pass for the refused one.
    path = tmp_path / "model.pt2"
    path.write_bytes(b"an earlier package")
    with pytest.raises(pt2.ExportParityError, match="refused to write .*model.pt2: the compiled resnet18 on real"):
        pt2._finish(str(path), None, {}, doctored, gap)
    assert not path.exists()
    beside = json.loads((tmp_path / "model.parity.json").read_text())
    assert beside["accepted"] is False and beside["refused_because"] == gap


def test_compare_outputs_catches_shape_nan_and_flipped_classes():
    reference = torch.tensor([[1.0, 3.0], [2.0, -1.0]])
    same = pt2.compare_outputs(reference.clone(), {"torchtl": reference}, "classification")["against_torchtl"]
    assert same == {"max_abs_error": 0.0, "max_abs_reference": 3.0, "relative_error": 0.0, "top1_agreement": 1.0}
    flipped = pt2.compare_outputs(reference.flip(1), {"torchtl": reference}, "classification")["against_torchtl"]
    assert flipped["top1_agreement"] == 0.0 and flipped["relative_error"] == 1.0
    nan = reference.clone()
    nan[0, 0] = math.nan
    record = {"checks": {"random": pt2.compare_outputs(nan, {"torchtl": reference}, "classification")}}
    assert "strays from torchtl by nan" in pt2.check_parity(record)
    record = {"checks": {"random": pt2.compare_outputs(reference[:, :1], {"torchvision": reference}, "classification")}}
    assert pt2.check_parity(record) == "on random inputs the package returns shape [2, 1], torchvision [2, 2]"
    masks = pt2.compare_outputs(torch.zeros(1, 3, 2, 2), {"torchtl": torch.zeros(1, 3, 2, 2)}, "segmentation")
    assert masks["against_torchtl"]["mask_agreement"] == 1.0


@pytest.mark.parametrize("arch", ["resnext50_32x4d", "fcn_resnet50", "deeplabv3_resnet50"])
def test_each_module_kind_exports_with_its_weights_as_parameters(arch):
    # resnet18 (BasicBlock) is compiled above; these hold every other module torchtl builds:
    # grouped Bottlenecks, the dilated backbone, FCNHead, ASPP with its pooling branch.
    builder = getattr(torchtl.models, arch, None) or getattr(torchtl.segmentation, arch)
    model = builder(num_classes=4).eval()
    module = pt2._MainOutput(model) if arch.startswith(("fcn", "deeplabv3")) else model
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        expected = pt2._scores(model(x))
    # Every weight and statistic is an input of the graph, none baked in as a constant (what an
    # opaque C++ forward would give).
    prefix = "model." if module is not model else ""
    lifted = {k[len(prefix):] for k in program.state_dict}
    assert {k for k in model.state_dict() if not k.endswith("num_batches_tracked")} <= lifted
    assert not any(isinstance(c, torch.Tensor) for c in program.constants.values())
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-4, atol=1e-4)


def test_export_refuses_what_it_cannot_check(tmp_path):
    with pytest.raises(TypeError, match="export takes a torchtl model or the path of a torchtl model file"):
        torchtl.export(torch.nn.Linear(2, 2), tmp_path / "m.pt2")
    with pytest.raises(ValueError, match="ends in .pt2"):
        torchtl.export(torchtl.models.resnet18(), tmp_path / "m.zip")
    with pytest.raises(ValueError, match="example_size must be"):
        torchtl.export(torchtl.models.resnet18(), tmp_path / "m.pt2", example_size=(8, 64))
    with pytest.raises(FileNotFoundError, match="model file not found"):
        torchtl.export(tmp_path / "missing.pt", tmp_path / "m.pt2")


def test_cli_export_prints_the_record(package, monkeypatch, capsys, tmp_path):
    _, _, record = package
    calls = []
    monkeypatch.setattr(pt2, "export", lambda model, out, **kw: calls.append((model, out, kw)) or record)
    assert cli.main(["export", "--model", "resnet18", "--num-classes", "3", "--size", "64", "48",
                     "--out", str(tmp_path / "m.pt2")]) == 0
    out = capsys.readouterr().out
    (model, path, kwargs), = calls
    assert isinstance(model, torchtl.models.ResNet) and path.endswith("m.pt2")
    assert kwargs["example_size"] == (64, 48) and kwargs["dynamic_batch"] and kwargs["device"] == "cpu"
    assert "real inputs [6, 3, 64, 64], against torchvision: largest error" in out and "agreement 100.0%" in out
    assert "the package runs at torchtl" in out
    assert cli.main(["export", "--out", str(tmp_path / "m.pt2")]) == 2
    assert "give a model file" in capsys.readouterr().err
