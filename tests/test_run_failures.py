"""fit when a run cannot go as asked: no usable data, bad hyperparameters, and every state a kill
during the checkpoint writes can leave behind. Each gets one clear error saying what to do, and
the clean-up after a failure never replaces its error."""
import os
import warnings

import pytest
import torch

import torchtl
from torchtl import data
from test_engine import loader, write_classification_set
from test_engine_runs import skip_loader, tiny_net, write_set_with_bad_images

fit = torchtl.engine.fit


@pytest.fixture(scope="module")
def cls_map(tmp_path_factory):
    return write_classification_set(tmp_path_factory.mktemp("cls"), n_per_class=2)


# --- training or validating on nothing ------------------------------------------------------------


def test_training_set_whose_every_sample_is_skipped_is_an_error(tmp_path):
    map_file = write_set_with_bad_images(tmp_path, bad=range(8))
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.SkippedSamplesWarning)
        with pytest.raises(ValueError, match=r"epoch 1: no training batch was usable: all 8 samples were skipped by "
                                             r"on_error=\"skip\" \(the first: .*bad0.png.*nothing was trained"):
            fit(tiny_net(), skip_loader(map_file), device="cpu", epochs=2, checkpoint_dir=run, progress=False)
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_validation_set_whose_every_sample_is_skipped_is_an_error(tmp_path, cls_map):
    bad = write_set_with_bad_images(tmp_path, bad=range(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.SkippedSamplesWarning)
        with pytest.raises(ValueError, match="the evaluation loader yielded no batch .*every sample skipped"):
            fit(tiny_net(), loader(cls_map), skip_loader(bad), device="cpu", progress=False)


# --- hyperparameters, and the clean-up after an error ---------------------------------------------


@pytest.mark.parametrize("option, value, message", [
    ("lr", float("nan"), "lr must be a finite number >= 0, got nan"),
    ("lr", -0.1, "lr must be a finite number >= 0, got -0.1"),
    ("momentum", float("inf"), "momentum must be a finite number >= 0, got inf"),
    ("weight_decay", -1.0, "weight_decay must be a finite number >= 0, got -1"),
    ("head_lr", float("nan"), "head_lr must be a finite number >= 0, got nan"),
    ("gamma", float("nan"), "gamma must be a finite number >= 0, got nan"),
    ("label_smoothing", 1.5, r"label_smoothing must be a finite number in \[0, 1\], got 1.5"),
    ("clip_grad_norm", float("nan"), "clip_grad_norm must be a finite number >= 0, got nan"),
    ("step_size", 0, "step_size must be positive, got 0"),
])
def test_bad_hyperparameters_name_the_option_and_the_clean_up_keeps_the_error(tmp_path, cls_map, option, value,
                                                                              message):
    run = tmp_path / "ck"
    with pytest.raises(ValueError, match=message) as error:
        fit(tiny_net(), loader(cls_map), device="cpu", checkpoint_dir=run, progress=False, **{option: value})
    assert not getattr(error.value, "__notes__", None), error.value.__notes__
    assert not run.exists()  # refused before anything was written


def test_bad_hyperparameters_of_an_optimizer_instance_name_the_group(cls_map):
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    opt.param_groups[0]["lr"] = float("nan")  # torch.optim checks only at construction
    with pytest.raises(ValueError, match="the optimizer's param group 0: lr must be a finite number >= 0, got nan"):
        fit(net, loader(cls_map), optimizer=opt, device="cpu", progress=False)


def test_an_error_before_the_run_folder_exists_is_not_replaced_by_the_clean_up(tmp_path, cls_map):
    # Raised in C++ before checkpoint_dir is made: the run log has no folder to write history.json into.
    run = tmp_path / "ck"
    with pytest.raises(ValueError, match="feature_extractor mode knows the heads of ResNet, FCN and DeepLabV3") as error:
        fit(tiny_net(), loader(cls_map), device="cpu", mode="feature_extractor", checkpoint_dir=run, tensorboard=False,
            progress=False)
    assert not getattr(error.value, "__notes__", None) and not run.exists()


def test_a_failing_clean_up_is_a_note_on_the_real_error(tmp_path, monkeypatch):
    def broken_finish(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torchtl._runlog.RunLog, "finish", broken_finish)
    map_file = write_set_with_bad_images(tmp_path, bad=range(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.SkippedSamplesWarning)
        with pytest.raises(ValueError, match="no training batch was usable") as error:
            fit(tiny_net(), skip_loader(map_file), device="cpu", checkpoint_dir=tmp_path / "ck", progress=False)
    assert error.value.__notes__ == ["(writing the run log afterwards failed too: OSError: disk full)"]


# --- what a kill during the checkpoint writes leaves: every state resumable or restartable --------


def _epoch_one(cls_map, run, **kwargs):
    return fit(tiny_net(), loader(cls_map), loader(cls_map, shuffle=False), device="cpu", checkpoint_dir=run,
               progress=False, **kwargs)


def test_killed_while_writing_the_first_last_pt_restarts_and_leaves_no_tmp(tmp_path, cls_map):
    # A kill inside epoch 1's first write (last.pt comes first): only its temporary file is there.
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt.tmp").write_bytes(b"half a checkpoint")
    (run / "history.json.tmp").write_text("{")
    (run / "metrics.csv.tmp").write_text("epoch,lr")  # a resume's rewrite of metrics.csv, killed
    _epoch_one(cls_map, run)
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []
    assert (run / "last.pt").exists() and (run / "best.pt").exists()


def test_killed_between_last_pt_and_best_pt_resumes_and_rewrites_best_pt(tmp_path, cls_map):
    run = tmp_path / "run"
    _epoch_one(cls_map, run, epochs=1)
    best_weights = torch.load(run / "best.pt")
    # The state a kill after last.pt's rename leaves: best.pt not (yet) written, its temporary file half.
    os.remove(run / "best.pt")
    (run / "best.pt.tmp").write_bytes(b"half")
    with pytest.raises(FileExistsError, match=r"pass resume='.*last.pt' to continue it"):
        _epoch_one(cls_map, run)
    # Resumed with as many epochs as were done: nothing trains, and best.pt is written again from last.pt.
    _epoch_one(cls_map, run, epochs=1, resume=run / "last.pt")
    assert not (run / "best.pt.tmp").exists()
    restored = torch.load(run / "best.pt")
    assert restored.keys() == best_weights.keys()
    assert all(torch.equal(restored[k], best_weights[k]) for k in best_weights)


def test_a_folder_with_best_pt_but_no_last_pt_says_how_to_start_again(tmp_path, cls_map):
    # What an earlier torchtl (best.pt written first) left after a kill in epoch 1's writes.
    run = tmp_path / "run"
    run.mkdir()
    torch.save(tiny_net().state_dict(), run / "best.pt")
    (run / "last.pt.tmp").write_bytes(b"half")
    with pytest.raises(FileExistsError, match=r"holds files of an earlier run \(best.pt\) but no last.pt, so that run "
                                              r"cannot be resumed. To start a new one, move best.pt out of it"):
        _epoch_one(cls_map, run)
    os.rename(run / "best.pt", tmp_path / "kept.pt")
    _epoch_one(cls_map, run)
    assert (run / "last.pt").exists() and not (run / "last.pt.tmp").exists()
