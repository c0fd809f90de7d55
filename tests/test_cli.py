"""The torchtl command end to end on a tiny generated set: each subcommand, its flags and defaults, its errors."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from torchtl import data
from torchtl.tools import cli, demo_data

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


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


def small(*extra):
    return ["--epochs", 1, "-b", 4, "--size", 32, "--device", "cpu", "--quiet", *extra]


@pytest.fixture(scope="module")
def cls_run(sets, tmp_path_factory):
    """make-map, export-weights and one epoch of train classification, as a user would chain them."""
    root, cls, _ = sets
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert cli.main(["make-map", str(root / "shapes" / "train"), str(root / "train_map.txt")]) == 0
    assert cli.main(["export-weights", "--model", "resnet18", "--num-classes", "2", "--size", "32",
                     "--out", str(root / "w.pt")]) == 0
    argv = ["train", "classification", "--train", root / "train_map.txt", "--val", cls["val"], "--weights",
            root / "w.pt", "--output-dir", run_dir, *small()]
    assert cli.main([str(a) for a in argv]) == 0
    return run_dir, argv


def test_make_map_export_train_evaluate_predict_classification(sets, cls_run, capsys):
    root, cls, _ = sets
    run_dir, _ = cls_run
    assert (root / "train_map_classes.txt").read_text().split() == ["circle", "ring"]
    assert {"best.pt", "last.pt", "history.json", "config.json"} <= set(os.listdir(run_dir))
    history = json.loads((run_dir / "history.json").read_text())
    val_acc = history["epochs"][0]["val"]["acc1"]

    code, out, _ = run(capsys, "evaluate", "classification", "--checkpoint", run_dir / "best.pt", "--val", cls["val"],
                       "--device", "cpu", "--quiet")
    assert code == 0 and f"acc@1 {val_acc:.4f}" in out, out  # best.pt is the model validated in epoch 1

    image = root / "shapes" / "val" / "ring" / "0000.png"
    code, out, _ = run(capsys, "predict", "--checkpoint", run_dir / "best.pt", image, "--topk", 2, "--device", "cpu")
    assert code == 0
    probs = re.findall(r"(circle|ring) ([0-9.]+)", out)
    assert sorted(name for name, _ in probs) == ["circle", "ring"]
    assert sum(float(p) for _, p in probs) == pytest.approx(1.0, abs=2e-3)


def test_train_prints_every_epoch_of_the_history(sets, cls_run, capsys, tmp_path):
    _, cls, _ = sets
    code, out, err = run(capsys, "train", "classification", "--train", cls["train"], "--val", cls["val"],
                         "--output-dir", tmp_path / "r", *small())
    assert code == 0, err
    val_acc = json.loads((tmp_path / "r" / "history.json").read_text())["epochs"][0]["val"]["acc1"]
    assert f"val acc {val_acc:.3f}" in out


def test_predict_folder_and_segmentation_masks_at_input_size(sets, capsys, tmp_path):
    _, _, seg = sets
    code, out, err = run(capsys, "train", "segmentation", "--train", seg["train"], "--val", seg["val"], "--model",
                         "fcn_resnet50", "--num-classes", 4, "--output-dir", tmp_path / "seg", *small())
    assert code == 0, out + err
    miou = json.loads((tmp_path / "seg" / "history.json").read_text())["epochs"][0]["val"]["miou"]
    assert f"mIoU {miou:.3f}" in out

    # A folder of images of another size than the training size, and a plain file beside it.
    folder = tmp_path / "inputs"
    folder.mkdir()
    from torchvision.io import write_png

    write_png(torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8), str(folder / "wide.png"))
    (folder / "notes.txt").write_text("not an image: a folder's other files are left alone, as ImageFolder does")
    jpeg = os.path.join(os.path.dirname(seg["val"]), "JPEGImages", "val_0000.jpg")
    code, out, err = run(capsys, "predict", "--checkpoint", tmp_path / "seg" / "best.pt", folder, jpeg,
                         "--out", tmp_path / "pred", "--device", "cpu")
    assert code == 0, err
    for name, shape in (("wide", (45, 70)), ("val_0000", tuple(data.read_image(jpeg).shape[-2:]))):
        mask = data.read_mask(tmp_path / "pred" / f"{name}_mask.png")
        assert tuple(mask.shape) == shape
        assert int(mask.max()) < 4  # class indices, not colours
        overlay = data.read_image(tmp_path / "pred" / f"{name}_overlay.png")
        assert tuple(overlay.shape) == (3, *shape)
    assert "notes.txt" not in out
    # The same predict again: refused before anything is written, the earlier masks untouched.
    before = (tmp_path / "pred" / "wide_mask.png").read_bytes()
    code, out, err = run(capsys, "predict", "--checkpoint", tmp_path / "seg" / "best.pt", folder,
                         "--out", tmp_path / "pred", "--device", "cpu")
    assert code == 2 and "wide_mask.png exists" in err and "never overwritten" in err, err
    assert (tmp_path / "pred" / "wide_mask.png").read_bytes() == before


def test_compare_report_holds_the_printed_numbers(sets, cls_run, capsys, tmp_path):
    root, cls, _ = sets
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "compare", "classification", "--train", cls["train"], "--val", cls["val"], "--weights",
                         root / "w.pt", "--scenarios", "scratch,feature_extractor", "--output-dir", out_dir, *small())
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


# ---------------------------------------------------------------------------- flags, defaults, help

def parse(*argv):
    return cli.build_parser().parse_args([str(a) for a in argv])


@pytest.mark.parametrize("reference, alias, dest, value", [
    (["--output-dir", "r"], ["--out", "r"], "output_dir", "r"),
    (["-j", "3"], ["--workers", "3"], "workers", 3),
    (["-b", "5"], ["--batch-size", "5"], "batch_size", 5),
    (["--wd", "0.5"], ["--weight-decay", "0.5"], "weight_decay", 0.5),
    (["--opt", "adamw"], ["--optimizer", "adamw"], "opt", "adamw"),
    (["--model", "resnet50"], ["--arch", "resnet50"], "model", "resnet50"),
    (["--lr-scheduler", "steplr"], ["--lr-schedule", "step"], "lr_scheduler", "step"),
])
def test_reference_flags_and_their_aliases(reference, alias, dest, value):
    base = ["train", "classification", "--train", "t.txt"]
    assert getattr(parse(*base, *reference), dest) == value == getattr(parse(*base, *alias), dest)


def test_reference_flags_reach_the_engine(monkeypatch, sets, tmp_path, capsys):
    _, cls, _ = sets
    seen = {}

    def fit(model, train, val, **kwargs):
        seen.update(kwargs)
        return {"epochs": []}

    import torchtl

    monkeypatch.setattr(torchtl.engine, "fit", fit)
    code, _, err = run(capsys, "train", "classification", "--train", cls["train"], "--output-dir", tmp_path / "r",
                       "--lr", 0.05, "--momentum", 0.8, "--wd", 0.001, "--label-smoothing", 0.1,
                       "--lr-warmup-epochs", 2, "--lr-scheduler", "steplr", "--lr-step-size", 3, "--lr-gamma", 0.5,
                       "--opt", "sgd_nesterov", *small())
    assert code == 0, err
    assert seen["lr"] == 0.05 and seen["momentum"] == 0.8 and seen["weight_decay"] == 0.001
    assert seen["label_smoothing"] == 0.1 and seen["warmup_epochs"] == 2 and seen["lr_schedule"] == "step"
    assert seen["step_size"] == 3 and seen["gamma"] == 0.5 and seen["optimizer"] == "sgd" and seen["nesterov"]


def test_help_shows_true_defaults():
    def help_of(*command):
        r = subprocess.run([sys.executable, "-m", "torchtl", *command, "--help"], capture_output=True, text=True,
                           env=ENV)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def entry(text, flag):
        """The help of one option, wrapped lines joined."""
        found = re.search(rf"^  {re.escape(flag)}[ ,].*?(?=^  -|\Z)", text, flags=re.M | re.S)
        assert found, flag
        return " ".join(found.group(0).split())

    train = help_of("train", "classification")
    for flag, default in (("--lr", "0.01"), ("--epochs", "10"), ("--momentum", "0.9"), ("--size", "224"),
                          ("--lr-warmup-epochs", "0"), ("-b", "8"), ("-j", "2"), ("--lr-scheduler", "cosine")):
        assert f"(default: {default})" in entry(train, flag), entry(train, flag)
    compare = help_of("compare", "classification")
    assert "(default: 64)" in entry(compare, "--size")
    assert parse("compare", "classification", "--train", "t", "--val", "v").size == 64  # what --help states
    segmentation = help_of("train", "segmentation")
    assert "(default: 520)" in entry(segmentation, "--base-size")
    assert "(default: 480)" in entry(segmentation, "--crop-size")
    for command in ([], ["make-map"], ["export-weights"], ["train"], ["evaluate"], ["predict"], ["compare"],
                    ["compare", "segmentation"]):
        assert "usage: torchtl" in help_of(*command)


def test_help_and_version_load_no_torch():
    """--help and --version answer without importing torch (which takes seconds)."""
    code = ("import sys; from torchtl.tools import cli\n"
            "for argv in (['--help'], ['--version'], ['train', 'classification', '--help']):\n"
            "    try: cli.main(argv)\n"
            "    except SystemExit as e: assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    import torchtl

    assert f"torchtl {torchtl.__version__}" in r.stdout
    r = subprocess.run([sys.executable, "-m", "torchtl", "--version"], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and r.stdout.strip() == f"torchtl {torchtl.__version__}"


# ---------------------------------------------------------------------------- errors and exit status

@pytest.mark.parametrize("argv, message", [
    (["train", "classification", "--train", "t.txt", "--lr", "0"], "argument --lr: expected a number > 0, got '0'"),
    (["train", "classification", "--train", "t.txt", "--size", "0"], "argument --size: expected an integer >= 16"),
    (["train", "classification", "--train", "t.txt", "--epochs", "0"], "argument --epochs: expected an integer >= 1"),
    (["train", "segmentation", "--train", "t.txt"], "the following arguments are required: --num-classes"),
    (["predict", "--checkpoint", "c.pt", "i.png", "--topk", "0"], "argument --topk: expected an integer >= 1"),
    (["predict", "--checkpoint", "c.pt", "i.png", "--topk", "-1"], "argument --topk: expected an integer >= 1"),
    (["train", "regression", "--train", "x"], "invalid choice: 'regression'"),
])
def test_bad_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, status, message", [
    (["train", "classification", "--train", "missing.txt", "--val", "missing.txt"], 1,
     "no such file or folder: missing.txt"),
    (["make-map", "no/such/folder", "out.txt"], 1, "no such file or folder"),
    (["evaluate", "--checkpoint", "nope.pt", "--val", "v.txt", "--model", "resnet18"], 1,
     "checkpoint not found: nope.pt"),
    (["export-weights", "--model", "resnet7", "--out", "x.pt"], 2, "unknown --model 'resnet7'"),
    (["train", "classification", "--train", "t.txt", "--model", "fcn_resnet50"], 2,
     "--model fcn_resnet50 is not a classification model"),
    (["compare", "classification", "--train", "a.txt", "--val", "b.txt"], 1, "no such file or folder: a.txt"),
    (["train", "classification", "--train", "t.txt", "--device", "cpu", "--amp"], 2, "--amp fp16 needs a CUDA device"),
])
def test_errors_exit_with_their_status_and_no_traceback(argv, status, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == status, err
    assert message in err and "Traceback" not in err


def test_every_bad_map_line_is_reported_by_the_cpp_reader(sets, capsys, tmp_path, monkeypatch):
    _, cls, _ = sets
    image = os.path.abspath(os.path.join(os.path.dirname(cls["train"]), "train", "ring", "0000.png"))
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{image}\t0\n{image}\n{image}\t1\nonly-a-path-with-no-label\n")
    monkeypatch.chdir(tmp_path)
    for command in (["train", "classification", "--train", bad, "--device", "cpu"],
                    ["compare", "classification", "--train", bad, "--val", bad, "--scenarios", "scratch",
                     "--device", "cpu"]):
        code, _, err = run(capsys, *command)
        assert code == 1, err
        assert "bad.txt" in err and "line 2" in err and "line 4" in err, err  # every bad line, not the first
        assert "Traceback" not in err and "IndexError" not in err
    assert not (tmp_path / "runs").exists()  # nothing written for a run that could not start


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        cli.main(["make-map", "no/such/folder", "out.txt", "--debug"])
    r = subprocess.run([sys.executable, "-m", "torchtl", "make-map", "no/such/folder", "out.txt"], capture_output=True,
                       text=True, env=ENV, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "no such file or folder" in r.stderr


def test_predict_names_the_file_that_is_not_an_image(cls_run, capsys, tmp_path):
    run_dir, _ = cls_run
    fake = tmp_path / "photo.jpg"
    fake.write_text("plain text")
    code, _, err = run(capsys, "predict", "--checkpoint", run_dir / "best.pt", fake, "--device", "cpu")
    assert code == 1 and str(fake) in err and "Traceback" not in err
    assert ".cpp" not in err  # not torchvision's own source path


def test_broken_config_json_is_named(cls_run, capsys, tmp_path):
    run_dir, _ = cls_run
    copy = tmp_path / "run"
    copy.mkdir()
    # An earlier torchtl's best.pt, a bare state dict: config.json describes it.
    torch.save(torch.load(run_dir / "best.pt", weights_only=True), copy / "best.pt")
    (copy / "config.json").write_text('{"arch": "resnet18",')
    code, _, err = run(capsys, "predict", "--checkpoint", copy / "best.pt", __file__)
    assert code == 1 and str(copy / "config.json") in err and "not valid JSON" in err


# ---------------------------------------------------------------------------- runs keep their past

def test_a_failing_or_second_run_keeps_the_earlier_one(cls_run, capsys):
    run_dir, argv = cls_run
    before = {name: (run_dir / name).read_bytes() for name in ("config.json", "history.json", "best.pt")}
    for extra in (["--model", "resnet7"], ["--lr", "0"], ["--weights", "missing.pt"], []):
        try:
            code, _, err = run(capsys, *argv, *extra)
        except SystemExit as e:
            code, err = e.code, capsys.readouterr().err
        assert code in (1, 2), err
    assert "already holds a run (config.json, history.json, best.pt, last.pt)" in err
    assert "--resume" in err
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_a_run_folder_without_last_pt_says_how_to_start_again(cls_run, capsys, tmp_path):
    run_dir, argv = cls_run
    copy = tmp_path / "no_last"
    copy.mkdir()
    (copy / "best.pt").write_bytes((run_dir / "best.pt").read_bytes())
    argv = [*argv[:argv.index("--output-dir")], "--output-dir", copy, *argv[argv.index("--output-dir") + 2:]]
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert "holds files of an earlier run (best.pt) but no last.pt" in err and "--resume" not in err
    assert (copy / "best.pt").read_bytes() == (run_dir / "best.pt").read_bytes() and not (copy / "last.pt").exists()


def test_resume_continues_the_run(cls_run, capsys):
    run_dir, argv = cls_run
    config = (run_dir / "config.json").read_text()
    code, _, err = run(capsys, *argv[:argv.index("--output-dir")], "--resume", run_dir / "last.pt",
                       *small("--epochs", 2))
    assert code == 0, err
    assert (run_dir / "config.json").read_text() == config
    checkpoint = torch.load(run_dir / "last.pt", weights_only=False)
    assert checkpoint["epoch"] == 2  # the second epoch ran, from the first one's state
    code, _, err = run(capsys, *argv[:argv.index("--output-dir")], "--resume", run_dir / "last.pt",
                       "--size", 48, "--epochs", 3, "--device", "cpu", "--quiet")
    assert code == 2 and "size: 32 before, 48 now" in err


def test_test_only_writes_nothing(sets, cls_run, capsys, tmp_path, monkeypatch):
    root, cls, _ = sets
    run_dir, _ = cls_run
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", "classification", "--test-only", "--val", cls["val"], "--weights",
                         run_dir / "best.pt", "--num-classes", 2, "--size", 32, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "acc@1" in out and os.listdir(tmp_path) == []


def test_a_folder_map_is_never_overwritten_with_other_samples(sets, tmp_path):
    from torchtl.tools import compare

    _, cls, _ = sets
    folder = os.path.join(os.path.dirname(cls["train"]), "train")
    path = compare.resolve_map(folder, tmp_path, "train")
    first = open(path).read()
    assert compare.resolve_map(folder, tmp_path, "train") == path and open(path).read() == first  # same: kept
    other = os.path.join(os.path.dirname(cls["train"]), "val")
    with pytest.raises(FileExistsError, match="already lists other samples"):
        compare.resolve_map(other, tmp_path, "train")
    assert open(path).read() == first and sorted(os.listdir(tmp_path)) == ["train.txt", "train_classes.txt"]


# ---------------------------------------------------------------------------- make-map

def test_make_map_lists_exactly_what_imagefolder_lists(tmp_path, capsys):
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = tmp_path / "tree"
    for c in ("a", "b"):
        (root / c / "sub").mkdir(parents=True)
        for i, ext in enumerate(IMG_EXTENSIONS + (".JPG", ".Bmp", ".gif", ".txt", ".jpg.bak")):
            (root / c / ("sub" if i % 3 == 0 else "") / f"{i:02d}{ext}").write_bytes(b"")  # ImageFolder only lists
    code, out, err = run(capsys, "make-map", root, tmp_path / "m.txt")
    assert code == 0, err
    listed = [line.split("\t") for line in (tmp_path / "m.txt").read_text().splitlines()]
    expected = ImageFolder(str(root), loader=lambda p: None).samples
    assert [(os.path.normpath(tmp_path / p), int(c)) for p, c in listed] == [(os.path.normpath(p), c)
                                                                             for p, c in expected]
    assert any(p.endswith(".bmp") for p, _ in listed)


def test_train_prints_each_epoch_line_once(sets, tmp_path, capsys):
    """With progress on, fit prints each epoch's line as it ends; the command does not repeat them."""
    _, cls, _ = sets
    code, out, err = run(capsys, "train", "classification", "--train", cls["train"], "--val", cls["val"], "--epochs", 2,
                         "-b", 4, "--size", 32, "--device", "cpu", "--output-dir", tmp_path / "run")
    assert code == 0, err
    lines = re.split(r"[\r\n]", out + err)
    for epoch in (1, 2):
        assert sum(bool(re.match(rf"epoch {epoch}\b.*train loss", line)) for line in lines) == 1, out + err
