"""torchtl.data under hostile input: nothing earlier is lost, nothing crashes or hangs, and every
bad input gets one error naming what is at fault. Where a crash or a hang is the failure mode, the
case runs in its own process with a time limit."""
import gc
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchtl import data

ROOT = Path(__file__).resolve().parents[1]
# Generous: importing torch takes long on a loaded machine; a hang still fails.
CHILD_TIMEOUT = 300


def _jpeg(path, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
    image.save(os.fsdecode(path), format="JPEG", quality=90)


def _tree(root, classes):
    for i, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        _jpeg(os.path.join(root, name, "a.jpg"), seed=i)
    return root


def _run(code, tmp_path):
    """Runs `code` in a fresh interpreter (this checkout's torchtl) and returns its stdout; the
    process must exit cleanly (no abort) within the time limit (no hang)."""
    setup = textwrap.dedent(f"""
        import os, sys, gc, threading, warnings
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from torchtl import data
        tmp = {str(tmp_path)!r}
    """)
    result = subprocess.run([sys.executable, "-c", setup + textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=CHILD_TIMEOUT, cwd=ROOT)
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    return result.stdout


def _numbered_map(tmp_path, n):
    """n samples of one image, sample i labelled i: a batch's labels name its samples."""
    _jpeg(tmp_path / "x.jpg")
    (tmp_path / "m.txt").write_text("".join(f"x.jpg\t{i}\n" for i in range(n)))
    return tmp_path / "m.txt"


# --- map files: a write never destroys an earlier one -------------------------------------------


def test_map_files_sharing_a_stem_keep_their_own_classes(tmp_path):
    _tree(tmp_path / "A", ["ant", "bee"])
    _tree(tmp_path / "B", ["cat", "dog", "eel"])
    data.write_map_file(tmp_path / "A", tmp_path / "train.txt")
    data.write_map_file(tmp_path / "B", tmp_path / "train.tsv")
    assert data.MapDataset(tmp_path / "train.txt").classes == ["ant", "bee"]
    assert data.MapDataset(tmp_path / "train.tsv").classes == ["cat", "dog", "eel"]
    assert data.classes_path_for(tmp_path / "train.txt") == str(tmp_path / "train_classes.txt")
    assert data.classes_path_for(tmp_path / "train.tsv") == str(tmp_path / "train_classes.tsv")


def test_map_file_write_refuses_to_overwrite_another_map(tmp_path):
    _tree(tmp_path / "A", ["ant", "bee"])
    data.write_map_file(tmp_path / "A", tmp_path / "train.txt")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    # train_classes.txt is train.txt's class list; writing a map file there would destroy it.
    with pytest.raises(ValueError, match=r"train_classes.txt' holds the classes of '.*train.txt'"):
        data.write_map_file(tmp_path / "A", tmp_path / "train_classes.txt")
    # A classes file that would land on an existing map file.
    with pytest.raises(ValueError, match=r"classes file '.*train.txt' of '.*val.txt' is a map file"):
        data.write_map_file(tmp_path / "A", tmp_path / "val.txt", classes_path=tmp_path / "train.txt")
    with pytest.raises(ValueError, match="the classes file and the map file are the same file"):
        data.write_map_file(tmp_path / "A", tmp_path / "new.txt", classes_path=tmp_path / "new.txt")
    # A failing write (an empty class folder) leaves the earlier files as they were.
    os.makedirs(tmp_path / "A" / "empty")
    with pytest.raises(ValueError, match="no images"):
        data.write_map_file(tmp_path / "A", tmp_path / "train.txt")
    with pytest.raises(IsADirectoryError, match=r"'.*A' is a directory, not a file"):
        data.write_map_file(_tree(tmp_path / "B", ["x"]), tmp_path / "A")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_classes_files_of_earlier_versions_are_read(tmp_path):
    _tree(tmp_path / "A", ["ant", "bee"])
    data.write_map_file(tmp_path / "A", tmp_path / "train.tsv")
    # Earlier versions wrote train_classes.txt for train.tsv too.
    os.rename(tmp_path / "train_classes.tsv", tmp_path / "train_classes.txt")
    assert data.MapDataset(tmp_path / "train.tsv").classes == ["ant", "bee"]
    # Once train.txt sits beside it, that file may be train.txt's: not used, and said so.
    (tmp_path / "train.txt").write_text((tmp_path / "train.tsv").read_text())
    with pytest.warns(UserWarning, match="may hold the classes of"):
        assert data.MapDataset(tmp_path / "train.tsv").classes is None


# --- map files: encodings, folders, binary content ----------------------------------------------


def test_non_utf8_paths_load_and_show_as_os_fsdecode(tmp_path):
    folder = os.fsencode(tmp_path) + b"/caf\xe9"
    os.makedirs(folder)
    _jpeg(folder + b"/x.jpg")
    (tmp_path / "m.txt").write_bytes(b"caf\xe9/x.jpg\t0\n")
    ds = data.MapDataset(tmp_path / "m.txt")
    assert ds[0][0].shape == (3, 16, 16)
    (path, label), = ds.samples
    assert path == os.fsdecode(folder + b"/x.jpg") and label == 0
    assert os.path.isfile(path) and torch.equal(data.read_image(path), ds[0][0])  # the str reaches the same file
    # Missing, in a file with skipped lines and in a loader error: named, with the byte as \xe9.
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9/nope.jpg\t0\ncaf\xe9/x.jpg\t0\n")
    with pytest.raises(FileNotFoundError, match=r"bad.txt' has 1 bad line:\n  line 1: image '.*caf\\xe9/nope.jpg'"):
        data.MapDataset(tmp_path / "bad.txt")
    with pytest.warns(data.SkippedSamplesWarning, match=r"line 1: image '.*caf\\xe9/nope.jpg' does not exist"):
        assert len(data.MapDataset(tmp_path / "bad.txt", on_error="skip")) == 1
    with open(folder + b"/broken.jpg", "wb") as f:
        f.write(b"not an image")
    (tmp_path / "broken.txt").write_bytes(b"caf\xe9/broken.jpg\t0\n")
    with pytest.raises(ValueError, match=r"broken.txt', line 1, image '.*caf\\xe9/broken.jpg'"):
        next(iter(data.DataLoader(data.MapDataset(tmp_path / "broken.txt"), num_workers=1, seed=0)))


def test_binary_utf16_nul_and_folder_map_files_are_named(tmp_path):
    _jpeg(tmp_path / "x.jpg")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"binary.txt' has \d+ bad lines?:\n  line 1: "):
        data.MapDataset(tmp_path / "binary.txt")
    (tmp_path / "utf16.txt").write_text("x.jpg\t0\n", encoding="utf-16")
    with pytest.raises(ValueError, match=r"utf16.txt' is UTF-16 .*save it as UTF-8"):
        data.MapDataset(tmp_path / "utf16.txt")
    (tmp_path / "nul.txt").write_bytes(b"x.jpg\t0\nx.jpg\x00.png\t0\n")
    with pytest.raises(ValueError, match=r"nul.txt' has 1 bad line:\n  line 2: holds a NUL byte"):
        data.MapDataset(tmp_path / "nul.txt")
    with pytest.raises(IsADirectoryError, match=r"map file '.*' is a directory"):
        data.MapDataset(tmp_path)
    os.makedirs(tmp_path / "folder.jpg")
    (tmp_path / "dir_entry.txt").write_text("folder.jpg\t0\n")
    with pytest.raises(ValueError, match=r"line 1: image '.*folder.jpg' is a directory"):
        data.MapDataset(tmp_path / "dir_entry.txt")


# --- masks --------------------------------------------------------------------------------------


def test_mask_values_beyond_num_classes_name_the_mask(tmp_path):
    _jpeg(tmp_path / "x.jpg")
    mask = np.zeros((16, 16), np.uint8)
    mask[0, 0], mask[1, 1] = 255, 3  # ignore_index and a valid class
    Image.fromarray(mask).save(tmp_path / "ok.png")
    mask[2, 2] = 7
    Image.fromarray(mask).save(tmp_path / "bad.png")
    (tmp_path / "seg.txt").write_text("x.jpg\tok.png\nx.jpg\tbad.png\n")
    ds = data.SegmentationMapDataset(tmp_path / "seg.txt", num_classes=5)
    assert ds[0][1].max() == 255
    with pytest.raises(ValueError, match=r"seg.txt', line 2: mask '.*bad.png' holds class 7 but num_classes=5"):
        ds[1]
    loader = data.DataLoader(data.SegmentationMapDataset(tmp_path / "seg.txt", data.segmentation_transform(False, 16),
                                                         num_classes=5), batch_size=2, num_workers=1, seed=0)
    with pytest.raises(ValueError, match=r"line 2: mask '.*bad.png' holds class 7"):
        next(iter(loader))
    assert data.SegmentationMapDataset(tmp_path / "seg.txt", num_classes=8)[1][1].max() == 255
    with pytest.raises(ValueError, match="num_classes must be positive"):
        data.SegmentationMapDataset(tmp_path / "seg.txt", num_classes=0)


def test_fit_and_evaluate_name_the_mask_holding_a_class_the_model_lacks(tmp_path):
    # The dataset was built without num_classes=: the engine checks each batch against the
    # model's classes, so the error names the file instead of torch's "Target 7 is out of bounds".
    import torchtl

    _jpeg(tmp_path / "x.jpg")
    mask = np.zeros((16, 16), np.uint8)
    mask[0, 0] = 255
    Image.fromarray(mask).save(tmp_path / "ok.png")
    mask[2, 2] = 7
    Image.fromarray(mask).save(tmp_path / "bad.png")
    (tmp_path / "seg.txt").write_text("x.jpg\tok.png\nx.jpg\tbad.png\n")
    loader = data.DataLoader(data.SegmentationMapDataset(tmp_path / "seg.txt", data.segmentation_transform(False, 16)),
                             batch_size=2, num_workers=1, seed=0)
    model = torchtl.segmentation.fcn_resnet50(num_classes=5, weights_backbone=None)
    expected = (r"seg.txt', line 2 \(mask '.*bad.png'\): the target holds class 7 but the model has 5 classes"
                r".*or ignore_index 255")
    with pytest.raises(ValueError, match=expected):
        torchtl.engine.evaluate(model, loader, task="segmentation", device="cpu")
    with pytest.raises(ValueError, match=expected):
        torchtl.engine.fit(model, loader, task="segmentation", mode="scratch", epochs=1, device="cpu",
                           checkpoint_dir=tmp_path / "run", progress=False)
    # ignore_index and classes below 5 train.
    (tmp_path / "good.txt").write_text("x.jpg\tok.png\nx.jpg\tok.png\n")
    good = data.DataLoader(data.SegmentationMapDataset(tmp_path / "good.txt", data.segmentation_transform(False, 16)),
                           batch_size=2, num_workers=1, seed=0)
    got = torchtl.engine.evaluate(model, good, task="segmentation", device="cpu")
    expected = torchtl.reference.evaluate(model.to_torchvision(), good, task="segmentation", device="cpu")
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4) and got["loss"] > 0


def test_fit_names_the_sample_whose_label_the_model_lacks(tmp_path):
    import torchtl

    for name in ("a", "b", "c"):
        _jpeg(tmp_path / f"{name}.jpg")
    (tmp_path / "train.txt").write_text("a.jpg\t0\nb.jpg\t4\nc.jpg\t1\n")
    loader = data.DataLoader(data.MapDataset(tmp_path / "train.txt", data.classification_transform(False, 16, resize_size=16),
                                             num_classes=None), batch_size=3, num_workers=1, seed=0)
    with pytest.raises(ValueError, match=r"train.txt', line 2: the target holds class 4 but the model has 3 classes"):
        torchtl.engine.fit(torchtl.models.resnet18(num_classes=3), loader, mode="scratch", epochs=1, device="cpu",
                           checkpoint_dir=tmp_path / "run", progress=False)


# --- seeds and epochs ---------------------------------------------------------------------------


def test_seeds_and_epochs_out_of_range_are_value_errors(tmp_path):
    m = _numbered_map(tmp_path, 2)
    ds = data.MapDataset(m, data.classification_transform(True, 8))
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, 2\*\*64\), got {bad}$"):
            data.DataLoader(ds, seed=bad)
        with pytest.raises(ValueError, match="seed must be an integer in"):
            data.MapDataset(m, seed=bad)
        with pytest.raises(ValueError, match="seed must be an integer in"):
            data.classification_transform(True, 8)(torch.zeros(3, 9, 9, dtype=torch.uint8), seed=bad)
        with pytest.raises(ValueError, match="epoch must be an integer in"):
            ds.load(0, bad)
    with pytest.raises(TypeError, match="seed must be an integer, got float"):
        data.DataLoader(ds, seed=1.5)
    loader = data.DataLoader(ds, seed=2**64 - 1)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        loader.set_epoch(-1)
    loader.set_epoch(3)
    assert len(list(loader)) == 2 and loader.epoch == 4


# --- weights ------------------------------------------------------------------------------------


def test_state_dict_with_a_non_tensor_value_names_the_key(tmp_path):
    import torchtl

    model = torchtl.models.resnet18(num_classes=3)
    state = dict(model.state_dict())
    state["fc.bias"] = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="state dict key 'fc.bias' holds a list, not a tensor"):
        torchtl.load_weights(model, state)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"w.pt': state dict key 'fc.bias' holds a GenericList, not a tensor"):
        torchtl.load_weights(model, tmp_path / "w.pt")


# --- the loader: threads, workers, fork ---------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_iterator_shared_by_threads_hands_out_each_batch_once(tmp_path, num_workers):
    m = _numbered_map(tmp_path, 40)
    out = _run(f"""
        ds = data.MapDataset({str(m)!r}, data.classification_transform(False, 8))
        it = iter(data.DataLoader(ds, batch_size=1, num_workers={num_workers}, seed=0))
        got, errors = [], []
        def pull():
            try:
                for _, y in it:
                    got.append(int(y))
            except Exception as e:
                errors.append(repr(e))
        threads = [threading.Thread(target=pull) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(sorted(got) == list(range(40)), len(got), errors)
    """, tmp_path)
    assert out.split() == ["True", "40", "[]"], out


def test_too_many_workers_is_refused_and_failed_thread_creation_cleans_up(tmp_path):
    m = _numbered_map(tmp_path, 4)
    ds = data.MapDataset(m, data.classification_transform(False, 8))
    with pytest.raises(ValueError, match="num_workers must be between 0 and 1024, got 40000"):
        data.DataLoader(ds, num_workers=40000)
    # Thread creation that fails part-way (here: no address space left for more thread stacks)
    # raises, after joining the threads already started, instead of aborting the process.
    out = _run(f"""
        import resource
        ds = data.MapDataset({str(m)!r}, data.classification_transform(False, 8))
        loader = data.DataLoader(ds, batch_size=1, num_workers=1024, seed=0)
        base = len(os.listdir("/proc/self/task"))
        with open("/proc/self/status") as f:
            vm = next(int(l.split()[1]) for l in f if l.startswith("VmSize")) * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), hard))
        try:
            iter(loader)
        except RuntimeError as e:
            print("error:", e)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        print("threads back:", len(os.listdir("/proc/self/task")) == base)
        print("batches:", len(list(data.DataLoader(ds, batch_size=1, num_workers=2, seed=0))))
    """, tmp_path)
    assert "could not start loader thread" in out and "of num_workers=1024" in out and "use fewer workers" in out, out
    assert "threads back: True" in out and "batches: 4" in out, out


def test_forked_child_raises_instead_of_hanging(tmp_path):
    m = _numbered_map(tmp_path, 8)
    out = _run(f"""
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a multi-threaded process
        ds = data.MapDataset({str(m)!r}, data.classification_transform(False, 8))
        it = iter(data.DataLoader(ds, batch_size=1, num_workers=2, seed=0))
        next(it)
        pid = os.fork()
        if pid == 0:
            try:
                next(it)
                print("child: a batch", flush=True)
            except RuntimeError as e:
                print("child:", e, flush=True)
            del it
            gc.collect()  # dropping the iterator in the child must not wait for the parent's threads
            print("child: done", flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child status:", status)
        print("parent batches:", 1 + len(list(it)))
    """, tmp_path)
    assert "child: a loader iterator cannot be used in a forked child process" in out, out
    assert "child: done" in out and "child status: 0" in out and "parent batches: 8" in out, out


@pytest.mark.parametrize("child", ["continue", "new_iterator", "new_loader"])
def test_forked_child_gets_a_clear_error_or_a_working_new_loader(tmp_path, child):
    # The child exits through the interpreter's own shutdown, which drops the parent's iterator there:
    # that must not abort (it did: std::thread::detach of a thread that is gone threw from a destructor).
    m = _numbered_map(tmp_path, 8)
    out = _run(f"""
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a multi-threaded process
        ds = data.MapDataset({str(m)!r}, data.classification_transform(False, 8))
        loader = data.DataLoader(ds, batch_size=1, num_workers=2, seed=0)
        it = iter(loader)
        next(it)
        pid = os.fork()
        if pid == 0:
            if {child!r} == "continue":
                try:
                    for _ in it:
                        pass
                except RuntimeError as e:
                    print("child:", e, flush=True)
            elif {child!r} == "new_iterator":
                print("child batches:", len(list(loader)), flush=True)
            else:
                print("child batches:", len(list(data.DataLoader(ds, batch_size=1, num_workers=2))), flush=True)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exit:", os.waitstatus_to_exitcode(status))
        print("parent batches:", 1 + len(list(it)))
    """, tmp_path)
    expected = ("child: a loader iterator cannot be used in a forked child process" if child == "continue"
                else "child batches: 8")
    assert expected in out and "child exit: 0" in out and "parent batches: 8" in out, out
