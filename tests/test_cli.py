"""The torchtl command end to end on a tiny generated set: each subcommand once, the report files, bad input."""
import json
import os
import re
import subprocess
import sys

import pytest

from torchtl import cli, demo_data


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cls = demo_data.make_classification_set(root / "shapes", ("circle", "ring"), train_per_class=4, val_per_class=3,
                                            size=32, seed=0)
    seg = demo_data.make_segmentation_set(root / "voc", train=4, val=2, size=32, seed=0)
    return root, cls, seg


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_make_map_export_train_evaluate_predict_classification(sets, capsys):
    root, cls, _ = sets
    code, out, _ = run(capsys, "make-map", root / "shapes" / "train", root / "train_map.txt")
    assert code == 0 and "(8 samples)" in out and "2 classes" in out
    assert (root / "train_map_classes.txt").read_text().split() == ["circle", "ring"]

    code, out, _ = run(capsys, "export-weights", "--arch", "resnet18", "--num-classes", "2", "--size", "32",
                       "--out", root / "w.pt")
    assert code == 0 and (root / "w.pt").is_file()

    run_dir = root / "run"
    code, out, err = run(capsys, "train", "classification", "--train", root / "train_map.txt", "--val", cls["val"],
                       "--weights", root / "w.pt", "--epochs", 1, "--batch-size", 4, "--size", 32, "--device", "cpu",
                       "--out", run_dir, "--quiet")
    assert code == 0, out + err
    assert {"best.pt", "last.pt", "history.json", "config.json"} <= set(os.listdir(run_dir))
    history = json.loads((run_dir / "history.json").read_text())
    val_acc = history["epochs"][0]["val"]["acc1"]
    assert f"val acc {val_acc:.3f}" in out

    code, out, _ = run(capsys, "evaluate", "classification", "--checkpoint", run_dir / "best.pt", "--val", cls["val"],
                       "--device", "cpu", "--quiet")
    assert code == 0 and f"acc@1 {val_acc:.4f}" in out, out  # best.pt is the model validated in epoch 1

    image = root / "shapes" / "val" / "ring" / "0000.png"
    code, out, _ = run(capsys, "predict", "--checkpoint", run_dir / "best.pt", image, "--topk", 2, "--device", "cpu")
    assert code == 0
    probs = re.findall(r"(circle|ring) ([0-9.]+)", out)
    assert sorted(name for name, _ in probs) == ["circle", "ring"]
    assert sum(float(p) for _, p in probs) == pytest.approx(1.0, abs=2e-3)


def test_train_and_predict_segmentation(sets, capsys, tmp_path):
    _, _, seg = sets
    code, out, err = run(capsys, "train", "segmentation", "--train", seg["train"], "--val", seg["val"], "--arch",
                       "fcn_resnet50", "--num-classes", 4, "--epochs", 1, "--batch-size", 2, "--size", 32,
                       "--device", "cpu", "--out", tmp_path / "seg", "--quiet")
    assert code == 0, out + err
    miou = json.loads((tmp_path / "seg" / "history.json").read_text())["epochs"][0]["val"]["miou"]
    assert f"mIoU {miou:.3f}" in out
    image = os.path.join(os.path.dirname(seg["val"]), "JPEGImages", "val_0000.jpg")
    code, out, _ = run(capsys, "predict", "--checkpoint", tmp_path / "seg" / "best.pt", image, "--out",
                       tmp_path / "pred", "--device", "cpu")
    assert code == 0 and (tmp_path / "pred" / "val_0000_mask.png").is_file(), out


def test_compare_report_holds_the_printed_numbers(sets, capsys, tmp_path):
    root, cls, _ = sets
    weights = root / "w_compare.pt"
    assert run(capsys, "export-weights", "--num-classes", "2", "--size", "32", "--out", weights)[0] == 0
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "compare", "classification", "--train", cls["train"], "--val", cls["val"], "--weights",
                       weights, "--scenarios", "scratch,feature_extractor", "--epochs", 1, "--batch-size", 4,
                       "--size", 32, "--device", "cpu", "--out", out_dir, "--quiet")
    assert code == 0, out + err
    for name in ("report.md", "report.json", "curves.png"):
        assert (out_dir / name).is_file(), name
    report = json.loads((out_dir / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["scratch", "feature_extractor"]
    assert report["table"] in out and report["table"] in (out_dir / "report.md").read_text()
    for row in report["rows"]:
        line = next(l for l in out.splitlines() if l.startswith(f"| {row['name']} |"))
        assert f"| {row['cpp']['acc1']:.3f} | {row['python']['acc1']:.3f} |" in line
        assert f"{row['speedup']:.2f}x" in line
        assert row["max_step_loss_diff"] < 1e-2  # same start, same batches: the twins agree


@pytest.mark.parametrize("argv, message", [
    (["train", "classification", "--train", "missing.txt", "--val", "missing.txt"], "no map file or image folder"),
    (["make-map", "no/such/folder", "out.txt"], "no such file or folder"),
    (["evaluate", "--checkpoint", "nope.pt", "--val", "v.txt", "--arch", "resnet18"], "file not found: nope.pt"),
    (["export-weights", "--arch", "resnet7", "--out", "x.pt"], "unknown arch 'resnet7'"),
    (["compare", "classification", "--train", "a.txt", "--val", "b.txt"], "no such file or folder: a.txt"),
])
def test_bad_paths_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_arguments_and_debug(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "regression", "--train", "x"])
    assert e.value.code == 2
    with pytest.raises(FileNotFoundError):
        cli.main(["make-map", "no/such/folder", "out.txt", "--debug"])


def test_help_and_module_entry_point():
    for command in ([], ["make-map"], ["export-weights"], ["train"], ["evaluate"], ["predict"], ["compare"]):
        with pytest.raises(SystemExit) as e:
            cli.build_parser().parse_args(command + ["--help"])
        assert e.value.code == 0
    r = subprocess.run([sys.executable, "-m", "torchtl", "predict", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0 and "--topk" in r.stdout
