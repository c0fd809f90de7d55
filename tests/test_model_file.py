"""Model files: a torch.save state dict with its metadata beside it, read and written in C++."""
import json
import os
import re
import tomllib
import zipfile

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

import torchtl
from torchtl import data
from test_engine import loader, seg_loader, write_classification_set, write_segmentation_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_versions_agree():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)["project"]["version"]
    with open(os.path.join(ROOT, "csrc", "version.h")) as f:
        cpp = re.search(r'#define TORCHTL_VERSION "([^"]+)"', f.read()).group(1)
    assert pyproject == cpp == torchtl.__version__


def test_a_model_file_is_a_state_dict_torchvision_loads(tmp_path):
    model = torchtl.models.resnet18(num_classes=3)
    path = torchtl.save_model(model, tmp_path / "m.pt", classes=["a", "b", "c"])
    state = torch.load(path, weights_only=True)
    twin = torchvision.models.resnet18(num_classes=3)
    twin.load_state_dict(state)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("extra/torchtl_model.json")]
    assert len(names) == 1
    meta = json.loads(torch._C.PyTorchFileReader(path).get_record("extra/torchtl_model.json"))
    assert meta == torchtl.read_model_metadata(path)
    assert meta["format"] == "torchtl.model" and meta["format_version"] == 1
    assert meta["torchtl_version"] == torchtl.__version__
    assert meta["task"] == "classification" and meta["builder"] == "resnet18"
    assert meta["builder_args"]["num_classes"] == 3
    assert meta["classes"] == ["a", "b", "c"]
    assert meta["transform"] == {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear",
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_load_model_rebuilds_the_model_from_the_file_alone(tmp_path):
    model = torchtl.models.resnet18(num_classes=2, norm_layer=FrozenBatchNorm2d, zero_init_residual=True)
    transform = data.classification_transform(size=64, resize_size=72, mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0])
    path = torchtl.save_model(model, tmp_path / "m.pt", transform=transform)
    loaded = torchtl.load_model(path)
    assert isinstance(loaded.bn1, FrozenBatchNorm2d) and not loaded.training
    assert loaded.torchtl_metadata["transform"] == {"resize_size": 72, "crop_size": 64, "interpolation": "bilinear",
                                                    "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}
    assert loaded.torchtl_metadata["builder_args"]["norm_layer"] == "FrozenBatchNorm2d"
    assert loaded.torchtl_metadata["builder_args"]["zero_init_residual"] is True
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torchtl.exact_mode():
        assert torch.equal(loaded(x), model.eval()(x))


def test_segmentation_model_file(tmp_path):
    model = torchtl.segmentation.fcn_resnet50(num_classes=3, aux_loss=True)
    path = torchtl.save_model(model, tmp_path / "seg.pt", transform={"resize_size": 64, "mean": [0.4] * 3, "std": [0.2] * 3})
    meta = torchtl.read_model_metadata(path)
    assert meta["task"] == "segmentation" and meta["builder_args"] == {"num_classes": 3, "aux_loss": True}
    loaded = torchtl.load_model(path)
    assert type(loaded).__name__ == "FCN" and loaded.aux_classifier is not None
    twin = torchvision.models.segmentation.fcn_resnet50(num_classes=3, aux_loss=True, weights_backbone=None)
    twin.load_state_dict(torch.load(path, weights_only=True))


def test_a_bare_torchvision_state_dict_loads_when_the_builder_is_named(tmp_path):
    twin = torchvision.models.resnet18(num_classes=5)
    torch.save(twin.state_dict(), tmp_path / "tv.pt")
    assert torchtl.read_model_metadata(tmp_path / "tv.pt") is None
    with pytest.raises(ValueError, match=r"tv\.pt' has no torchtl metadata.*arch="):
        torchtl.load_model(tmp_path / "tv.pt")
    loaded = torchtl.load_model(tmp_path / "tv.pt", arch="resnet18")
    assert loaded.fc.out_features == 5
    assert loaded.torchtl_metadata["transform"]["crop_size"] == 224 and loaded.torchtl_metadata["classes"] is None
    with pytest.raises(ValueError, match=r"field 'builder_args.num_classes' is 3 but the weights' fc.weight has 5"):
        torchtl.load_model(tmp_path / "tv.pt", arch="resnet18", num_classes=3)
    seg = torchvision.models.segmentation.deeplabv3_resnet50(num_classes=4, aux_loss=True, weights_backbone=None)
    torch.save(seg.state_dict(), tmp_path / "seg.pt")
    loaded = torchtl.load_model(tmp_path / "seg.pt", arch="deeplabv3_resnet50")
    assert loaded.torchtl_metadata["builder_args"] == {"num_classes": 4, "aux_loss": True}


def write_with_record(tmp_path, record, name="m.pt"):
    """A resnet18 model file whose record is replaced by `record` (a dict or raw text)."""
    path = str(tmp_path / name)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), path)
    with zipfile.ZipFile(path) as z:
        top = z.namelist()[0].split("/")[0]
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"{top}/extra/torchtl_model.json", record if isinstance(record, str) else json.dumps(record))
    return path


def good_record(**changes):
    record = {"format": "torchtl.model", "format_version": 1, "torchtl_version": "0.1.0", "task": "classification",
              "builder": "resnet18", "builder_args": {"num_classes": 2}, "classes": ["x", "y"],
              "transform": {"resize_size": 64, "crop_size": 56, "interpolation": "bilinear",
                            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    for key, value in changes.items():
        if value is KeyError:
            del record[key]
        else:
            record[key] = value
    return record


def test_a_record_appended_with_zipfile_reads_as_written(tmp_path):
    path = write_with_record(tmp_path, good_record())
    assert torchtl.read_model_metadata(path) == good_record()
    assert torchtl.load_model(path).fc.out_features == 2


BAD_RECORDS = [
    (good_record(builder=KeyError), r"field 'builder' is missing"),
    (good_record(task="detection"), r"field 'task' is 'detection'"),
    (good_record(task="segmentation"), r"field 'task' is 'segmentation' but field 'builder' 'resnet18' builds a classification"),
    (good_record(builder_args={"num_classes": 3}, classes=None), r"field 'builder_args.num_classes' is 3 but the weights' fc.weight has 2"),
    (good_record(classes=["x"]), r"field 'classes' names 1 classes but field 'builder_args.num_classes' is 2"),
    (good_record(builder_args={"num_classes": "2"}), r"field 'builder_args.num_classes' must be a whole number"),
    (good_record(builder_args={"num_classes": 2, "dropout": 0.5}), r"field 'builder_args.dropout' is not an argument of resnet18"),
    (good_record(builder_args={"num_classes": 2, "groups": 32}), r"field 'builder_args.groups' is 32 but resnet18 has groups=1"),
    (good_record(builder="resnet19"), r"field 'builder' is 'resnet19'"),
    (good_record(format="other"), r"field 'format' is 'other'"),
    (good_record(format_version=2), r"field 'format_version' is 2"),
    (good_record(extra=1), r"field 'extra' is not a torchtl model-file field"),
    (good_record(transform={"resize_size": 64, "crop_size": 56, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}),
     r"field 'transform.interpolation' is 'bicubic'"),
    (good_record(transform={"resize_size": 64, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}),
     r"field 'transform.crop_size' is missing"),
    (good_record(transform={"resize_size": 64, "crop_size": 56, "interpolation": "bilinear", "mean": [0.5] * 2, "std": [0.5] * 3}),
     r"field 'transform.mean' must hold 3 values"),
    (good_record(transform={"resize_size": 64, "crop_size": 56, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5, 0, 1]}),
     r"field 'transform.std' must be positive"),
    ("{not json", r"is not valid JSON"),
    ("[1, 2]", r"field '\(the record\)' must be an object"),
]


@pytest.mark.parametrize("record, message", BAD_RECORDS, ids=[m[:40] for _, m in BAD_RECORDS])
def test_missing_or_contradictory_metadata_names_the_file_and_the_field(tmp_path, record, message):
    path = write_with_record(tmp_path, record, name="bad_model.pt")
    with pytest.raises((ValueError, TypeError), match=r"model file '.*bad_model\.pt'.*" + message):
        torchtl.load_model(path)


def test_files_that_are_not_model_files(tmp_path):
    good = torchtl.save_model(torchtl.models.resnet18(num_classes=2), tmp_path / "good.pt")
    raw = open(good, "rb").read()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "scripted.pt"))
    for name in ("truncated.pt", "empty.pt", "random.pt", "scripted.pt"):
        with pytest.raises(ValueError, match=rf"'{re.escape(str(tmp_path / name))}' is not a model file"):
            torchtl.load_model(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        torchtl.load_model(tmp_path / "missing.pt")
    torch.save({"a": 1}, tmp_path / "not_weights.pt")
    with pytest.raises(ValueError, match="not_weights.pt"):
        torchtl.load_model(tmp_path / "not_weights.pt", arch="resnet18")


def test_a_segmentation_file_said_to_be_another_builder(tmp_path):
    model = torchtl.segmentation.deeplabv3_resnet50(num_classes=2)
    path = torchtl.save_model(model, tmp_path / "seg.pt")
    with pytest.raises(ValueError, match=r"field 'builder' is 'deeplabv3_resnet50' but arch='fcn_resnet50'"):
        torchtl.load_model(path, arch="fcn_resnet50")


def test_save_model_refuses_what_it_cannot_describe(tmp_path):
    with pytest.raises(TypeError, match="torchtl builder"):
        torchtl.save_model(torchvision.models.resnet18(), tmp_path / "x.pt")
    with pytest.raises(ValueError, match="field 'classes' names 3 classes"):
        torchtl.save_model(torchtl.models.resnet18(num_classes=2), tmp_path / "x.pt", classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="segmentation transform, but the model is a classification"):
        torchtl.save_model(torchtl.models.resnet18(num_classes=2), tmp_path / "x.pt",
                           transform=data.segmentation_transform())
    assert not os.path.exists(tmp_path / "x.pt")


def test_fit_writes_best_pt_with_classes_and_the_eval_transform(tmp_path):
    cls_map = write_classification_set(tmp_path)
    (tmp_path / "train_classes.txt").write_text("red\ngreen\n")
    model = torchtl.models.resnet18(num_classes=2)
    torchtl.engine.fit(model, loader(cls_map), loader(cls_map), lr=0.01, epochs=1, device="cpu", progress=False,
                       checkpoint_dir=tmp_path / "run")
    meta = torchtl.read_model_metadata(tmp_path / "run" / "best.pt")
    assert meta["classes"] == ["red", "green"]
    assert meta["transform"] == {"resize_size": 32, "crop_size": 32, "interpolation": "bilinear",
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    torchvision.models.resnet18(num_classes=2).load_state_dict(torch.load(tmp_path / "run" / "best.pt"))
    assert torchtl.load_model(tmp_path / "run" / "best.pt").fc.out_features == 2


def test_fit_on_segmentation_writes_its_transform(tmp_path):
    seg_map = write_segmentation_set(tmp_path)
    model = torchtl.segmentation.fcn_resnet50(num_classes=3)
    torchtl.engine.fit(model, seg_loader(seg_map), seg_loader(seg_map), task="segmentation", lr=0.01, epochs=1,
                       device="cpu", progress=False, checkpoint_dir=tmp_path / "run")
    meta = torchtl.read_model_metadata(tmp_path / "run" / "best.pt")
    assert meta["task"] == "segmentation" and meta["builder"] == "fcn_resnet50"
    assert meta["transform"] == {"resize_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
