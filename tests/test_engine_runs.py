"""Training you can watch, resume and trust: epoch lines, logs, resume, sound metrics and NaN handling."""
import csv
import json
import math
import warnings

import pytest
import torch
from torchvision.io import write_png

import torchtl
from torchtl import data
from test_engine import loader, seg_loader, write_classification_set, write_segmentation_set


@pytest.fixture(scope="module")
def cls_map(tmp_path_factory):
    return write_classification_set(tmp_path_factory.mktemp("cls"))


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2))


class Batches:
    """A sized iterable that notes how many epoch lines were printed when each epoch starts."""

    def __init__(self, batches, printed):
        self.batches, self.printed, self.starts = batches, printed, []

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.starts.append(len(self.printed))
        return iter(self.batches)


def batches_of(map_file):
    return [(x, y) for x, y in loader(map_file, shuffle=False)]


@pytest.mark.parametrize("fit", [torchtl.engine.fit, torchtl.reference.fit], ids=["cpp", "python"])
def test_a_lasting_line_is_printed_as_each_epoch_ends(cls_map, monkeypatch, fit):
    printed = []
    monkeypatch.setattr(torchtl.engine._Bar, "write", lambda self, line: printed.append(line))
    train = Batches(batches_of(cls_map), printed)
    fit(tiny_net(), train, batches_of(cls_map), epochs=3, lr=0.05, device="cpu", progress=True)
    assert train.starts == [0, 1, 2]  # epoch k's line is out before epoch k + 1 starts
    assert [line.split()[1] for line in printed] == ["1/3", "2/3", "3/3"]
    for line in printed:
        for part in ("train loss", "acc", "val loss", "acc1", "lr", "img/s"):
            assert part in line, (part, line)
        assert line.endswith("s")


def test_tqdm_auto_bars_and_lines_on_stderr(cls_map, capsys):
    torchtl.engine.fit(tiny_net(), loader(cls_map), loader(cls_map, shuffle=False), epochs=2, device="cpu")
    err = capsys.readouterr().err
    assert "epoch 1/2  train loss" in err and "epoch 2/2  train loss" in err


def test_miou_averages_present_classes_and_reports_each():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    r = torchtl._C.engine.confusion_metrics(target, pred, 4)  # classes 2 and 3 never occur
    assert r["iou"][:2] == pytest.approx([1 / 2, 2 / 3]) and all(math.isnan(v) for v in r["iou"][2:])
    assert r["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # A class only predicted counts (IoU 0), as in the target.
    r = torchtl._C.engine.confusion_metrics(target, torch.tensor([[0, 0, 1, 3]]), 4)
    assert r["iou"][3] == 0.0 and r["miou"] == pytest.approx((1 + 1 / 2 + 0) / 3)


def test_segmentation_with_an_absent_class_keeps_best_pt_moving(tmp_path):
    seg_map = write_segmentation_set(tmp_path)  # classes 0, 1, 2 present; the model has 5
    torch.manual_seed(0)
    m = torchtl.segmentation.fcn_resnet50(num_classes=5, aux_loss=False)
    tv = m.to_torchvision()
    kwargs = dict(task="segmentation", lr=0.02, epochs=3, device="cpu", progress=False)
    h = torchtl.engine.fit(m, seg_loader(seg_map), seg_loader(seg_map), checkpoint_dir=tmp_path / "run", **kwargs)
    ref = torchtl.reference.fit(tv, seg_loader(seg_map), seg_loader(seg_map), **kwargs)
    mious = [e["val"]["miou"] for e in h["epochs"]]
    assert all(math.isfinite(v) for v in mious)
    assert any(math.isnan(v) for v in h["epochs"][0]["val"]["iou"])  # absent classes: NaN in the per-class list
    assert h["best_epoch"] == 1 + max(range(3), key=lambda i: mious[i])
    assert h["best_metric"] == pytest.approx(max(mious))
    assert ref["best_epoch"] == h["best_epoch"]
    for a, b in zip(h["epochs"], ref["epochs"]):
        assert a["val"]["miou"] == pytest.approx(b["val"]["miou"], rel=1e-4)


def test_resume_continues_history_csv_and_tensorboard(cls_map, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    kwargs = dict(lr=0.01, device="cpu", checkpoint_dir=run, progress=False)
    torchtl.engine.fit(tiny_net(), loader(cls_map), loader(cls_map, shuffle=False), epochs=2, **kwargs)
    first = json.loads((run / "history.json").read_text())
    stop_in_epoch_3 = lambda p: p["epoch"] < 3  # noqa: E731  a stop half-way through epoch 3
    h = torchtl.engine.fit(tiny_net(), loader(cls_map), loader(cls_map, shuffle=False), epochs=5,
                           resume=run / "last.pt", **dict(kwargs, progress=stop_in_epoch_3))
    assert h["interrupted"] and [e["epoch"] for e in h["epochs"]] == [1, 2, 3] and h["epochs"][-1]["interrupted"]
    h = torchtl.engine.fit(tiny_net(), loader(cls_map), loader(cls_map, shuffle=False), epochs=5,
                           resume=run / "last.pt", **kwargs)
    assert [e["epoch"] for e in h["epochs"]] == [1, 2, 3, 4, 5] and not h["interrupted"]
    assert h["epochs"][:2] == first["epochs"]  # the earlier epochs, untouched
    assert json.loads((run / "history.json").read_text()) == json.loads(json.dumps(h))
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([e["train_loss"] for e in h["epochs"]])
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5] and len(steps) == 5
    assert "val/acc1" in events.Tags()["scalars"]


def test_a_new_run_never_overwrites_an_earlier_one(cls_map, tmp_path):
    torchtl.engine.fit(tiny_net(), loader(cls_map), epochs=1, device="cpu", checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / "history.json").read_bytes()
    for fit in (torchtl.engine.fit, torchtl.reference.fit):
        with pytest.raises(FileExistsError, match="already holds an earlier run.*resume="):
            fit(tiny_net(), loader(cls_map), epochs=1, device="cpu", checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "history.json").read_bytes() == before


def test_tensorboard_argument(cls_map, tmp_path):
    torchtl.engine.fit(tiny_net(), loader(cls_map), epochs=1, device="cpu", tensorboard=tmp_path / "tb",
                       progress=False)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    torchtl.engine.fit(tiny_net(), loader(cls_map), epochs=1, device="cpu", tensorboard=False,
                       checkpoint_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "tensorboard").exists()
    with pytest.raises(ValueError, match="give a checkpoint_dir"):
        torchtl.engine.fit(tiny_net(), loader(cls_map), device="cpu", tensorboard=True, progress=False)


@pytest.mark.parametrize("fit", [torchtl.engine.fit, torchtl.reference.fit], ids=["cpp", "python"])
def test_nonfinite_losses_warn_once_stop_and_never_reach_best_pt(cls_map, tmp_path, fit):
    m = torchtl.models.resnet18(num_classes=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"6 non-finite losses \(max_nonfinite_losses=6\)"):
            fit(m, loader(cls_map), loader(cls_map, shuffle=False), lr=1e12, epochs=20, device="cpu",
                checkpoint_dir=tmp_path, max_nonfinite_losses=6, progress=False)
    nonfinite = [w for w in caught if "non-finite" in str(w.message) or "the loss is" in str(w.message)]
    assert len(nonfinite) == 1 and nonfinite[0].category is RuntimeWarning
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["epochs"], "the epochs before the stop are logged"
    if (tmp_path / "best.pt").exists():
        assert all(torch.isfinite(v).all() for v in torch.load(tmp_path / "best.pt").values() if v.is_floating_point())
    with pytest.raises(ValueError, match="max_nonfinite_losses must be positive"):
        fit(m, loader(cls_map), device="cpu", max_nonfinite_losses=0, progress=False)


def write_set_with_bad_images(root, bad):
    """8 good images, then the samples at the indices in `bad` replaced by garbage files."""
    map_file = write_classification_set(root, n_per_class=4)
    lines = map_file.read_text().splitlines()
    for i in bad:
        name = f"bad{i}.png"
        (root / name).write_bytes(b"not an image")
        lines[i] = f"{name}\t{lines[i].split()[1]}"
    map_file.write_text("\n".join(lines) + "\n")
    return map_file


def skip_loader(map_file):
    ds = data.MapDataset(map_file, transform=data.classification_transform(train=False, size=32, resize_size=32),
                         on_error="skip")
    return data.DataLoader(ds, batch_size=4, shuffle=False, num_workers=2, on_error="skip")


def test_skipped_samples_are_counted_and_a_bad_last_batch_is_fine(tmp_path):
    map_file = write_set_with_bad_images(tmp_path, bad=[1, 4, 5, 6, 7])  # the last batch entirely bad
    m = torchtl.models.resnet18(num_classes=2)
    with pytest.warns(data.SkippedSamplesWarning, match="skipped 5 bad samples in epoch 1") as record:
        h = torchtl.engine.fit(m, skip_loader(map_file), skip_loader(map_file), device="cpu", progress=False)
    assert any("evaluation" in str(w.message) for w in record)
    assert h["epochs"][0]["skipped"] == 5 and h["epochs"][0]["images"] == 3
    assert h["epochs"][0]["val"]["skipped"] == 5 and h["epochs"][0]["val"]["images"] == 3
    with pytest.warns(data.SkippedSamplesWarning):
        r = torchtl.engine.evaluate(m, skip_loader(map_file), device="cpu")
    assert r["skipped"] == 5 and r["confusion"].sum() == 3


@pytest.mark.parametrize("fit", [torchtl.engine.fit, torchtl.reference.fit], ids=["cpp", "python"])
def test_negative_seed(cls_map, fit):
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        fit(tiny_net(), loader(cls_map), device="cpu", seed=-1, progress=False)


def test_resume_errors_name_the_file(cls_map, tmp_path):
    run = tmp_path / "run"
    torchtl.engine.fit(tiny_net(), loader(cls_map), loader(cls_map, shuffle=False), device="cpu", checkpoint_dir=run,
                       progress=False)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "last.pt").read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"cannot read '{truncated}'"):
        torchtl.engine.fit(tiny_net(), loader(cls_map), epochs=2, device="cpu", resume=truncated, progress=False)
    for weights_only in (run / "best.pt", tmp_path / "state_dict.pt"):
        if not weights_only.exists():
            torch.save(tiny_net().state_dict(), weights_only)
        with pytest.raises(ValueError, match=f"'{weights_only}' is not a checkpoint written by fit.*last.pt"):
            torchtl.engine.fit(tiny_net(), loader(cls_map), epochs=2, device="cpu", resume=weights_only,
                               progress=False)
    with pytest.raises(FileNotFoundError, match="no such file"):
        torchtl.engine.fit(tiny_net(), loader(cls_map), device="cpu", resume=tmp_path / "nope.pt", progress=False)
    # The C++ reader names the file too (a C++ program has no Python check in front of it).
    m = tiny_net()
    cpp = torchtl.engine._cpp_model(m)
    options = dict(epochs=2, device="cpu", resume=str(truncated))
    with pytest.raises(ValueError, match=f"cannot read '{truncated}'"):
        torchtl._C.engine.fit(cpp, loader(cls_map)._cpp, None, None, None, **options)
    options["resume"] = str(run / "best.pt")
    with pytest.raises(ValueError, match="is not a checkpoint written by fit"):
        torchtl._C.engine.fit(cpp, loader(cls_map)._cpp, None, None, None, **options)
