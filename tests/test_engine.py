import copy
import json
import os
import signal

import pytest
import torch
import torchvision
from torchvision.io import write_png

import torchtl
from torchtl import data


def write_classification_set(root, n_per_class=8, size=32, classes=2):
    g = torch.Generator().manual_seed(0)
    lines = []
    for c in range(classes):
        for i in range(n_per_class):
            img = (torch.rand(3, size, size, generator=g) * 80).to(torch.uint8)
            img[c % 3] += 120  # a class is a dominant colour channel
            path = root / f"c{c}_{i}.png"
            write_png(img, str(path))
            lines.append(f"{path.name}\t{c}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root / "train.txt"


def write_segmentation_set(root, n=4, size=32):
    g = torch.Generator().manual_seed(1)
    lines = []
    for i in range(n):
        img = (torch.rand(3, size, size, generator=g) * 255).to(torch.uint8)
        mask = torch.zeros(1, size, size, dtype=torch.uint8)
        mask[:, 8:24, 8:24] = 1 + i % 2
        mask[:, :2, :] = 255
        write_png(img, str(root / f"img{i}.png"))
        write_png(mask, str(root / f"mask{i}.png"))
        lines.append(f"img{i}.png\tmask{i}.png")
    (root / "seg.txt").write_text("\n".join(lines) + "\n")
    return root / "seg.txt"


def loader(map_file, batch_size=4, shuffle=True, seed=0, drop_last=False):
    ds = data.MapDataset(map_file, transform=data.classification_transform(train=False, size=32, resize_size=32))
    return data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=2, seed=seed, drop_last=drop_last)


def seg_loader(map_file, batch_size=2):
    ds = data.SegmentationMapDataset(map_file, transform=data.segmentation_transform(train=False, base_size=32, crop_size=32))
    return data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=2, seed=3)


@pytest.fixture(scope="module")
def cls_map(tmp_path_factory):
    return write_classification_set(tmp_path_factory.mktemp("cls"))


RECIPES = {
    "sgd": dict(optimizer="sgd", lr=0.002, momentum=0.9, weight_decay=1e-4, epochs=5),
    "sgd+cosine": dict(optimizer="sgd", lr=0.002, momentum=0.9, nesterov=True, lr_schedule="cosine",
                       warmup_epochs=1, clip_grad_norm=1.0, label_smoothing=0.1, head_lr=0.01, epochs=5),
    # One epoch only: Adam divides by sqrt(v), so ulp-level differences between LibTorch's Adam
    # (mul_/add_) and Python's (lerp_) in near-zero gradients grow into lr-sized steps later on.
    "adamw": dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, epochs=1),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_cpp_loop_matches_python_twin_step_by_step(cls_map, recipe):
    m = torchtl.models.resnet18(num_classes=2)
    tv = m.to_torchvision()
    initial_fc = m.fc.weight.detach().clone()
    kwargs = dict(**RECIPES[recipe], device="cpu", seed=0, progress=False)
    cpp = torchtl.engine.fit(m, loader(cls_map), **kwargs)
    ref = torchtl.reference.fit(tv, loader(cls_map), **kwargs)
    a = torch.tensor([s for e in cpp["epochs"] for s in e["step_losses"]])
    b = torch.tensor([s for e in ref["epochs"] for s in e["step_losses"]])
    assert len(a) == len(b) == 4 * kwargs["epochs"]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)
    assert not torch.equal(m.fc.weight, initial_fc)
    sd = tv.state_dict()
    # A flipped Adam step moves an element by 2 lr (see above), at most once per step.
    atol = 2 * kwargs["lr"] * len(a) if kwargs["optimizer"] == "adamw" else 1e-4
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=1e-3, atol=atol)
    if kwargs["optimizer"] == "adamw":
        # Flips are rare (measured: 1e-6 of the elements beyond 1e-5), while training moves about 40% of
        # them further than that: a weight left untrained, or a step gone astray, shows here.
        floats = [k for k, v in sd.items() if v.is_floating_point()]
        diff = torch.cat([(m.state_dict()[k] - sd[k]).abs().flatten() for k in floats])
        assert (diff > 1e-5).float().mean() < 1e-4, (diff > 1e-5).float().mean()
    if "head_lr" in kwargs:
        assert cpp["epochs"][0]["lr"] == pytest.approx(ref["epochs"][0]["lr"])


def test_segmentation_loop_matches_python_twin(tmp_path):
    seg_map = write_segmentation_set(tmp_path)
    torch.manual_seed(0)
    m = torchtl.segmentation.fcn_resnet50(num_classes=3, aux_loss=True)
    tv = m.to_torchvision()
    kwargs = dict(task="segmentation", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, epochs=2,
                  lr_schedule="poly", aux_weight=0.5, device="cpu", seed=0, progress=False)
    cpp = torchtl.engine.fit(m, seg_loader(seg_map), seg_loader(seg_map), **kwargs)
    ref = torchtl.reference.fit(tv, seg_loader(seg_map), seg_loader(seg_map), **kwargs)
    a = torch.tensor([s for e in cpp["epochs"] for s in e["step_losses"]])
    b = torch.tensor([s for e in ref["epochs"] for s in e["step_losses"]])
    assert len(a) == 4
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)
    for key in ("loss", "pixel_acc", "miou"):
        assert cpp["epochs"][-1]["val"][key] == pytest.approx(ref["epochs"][-1]["val"][key], rel=1e-4, abs=1e-6)


def test_feature_extractor_freezes_and_cache_equals_uncached(cls_map):
    base = torchtl.models.resnet18(num_classes=2)
    frozen_before = {k: v.clone() for k, v in base.state_dict().items() if not k.startswith("fc.")}
    histories, models = [], []
    for cache in (True, False):
        m = copy.deepcopy(base)
        h = torchtl.engine.fit(m, loader(cls_map), loader(cls_map, shuffle=False), mode="feature_extractor",
                               optimizer="adam", lr=1e-2, epochs=3, device="cpu", cache_features=cache, progress=False)
        histories.append(h)
        models.append(m)
        for k, v in m.state_dict().items():
            if not k.startswith("fc."):
                assert torch.equal(v, frozen_before[k]), k
        assert [n for n, p in m.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    cached, uncached = histories
    assert cached["feature_cache"] and not uncached["feature_cache"]
    assert [e["feature_cache"] for e in cached["epochs"]] == [False, True, True]
    a = torch.tensor([s for e in cached["epochs"] for s in e["step_losses"]])
    b = torch.tensor([s for e in uncached["epochs"] for s in e["step_losses"]])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(models[0].fc.weight, models[1].fc.weight, rtol=1e-5, atol=1e-6)
    for e_cached, e_uncached in zip(cached["epochs"], uncached["epochs"]):  # validation reads the cache too
        assert e_cached["val"]["loss"] == pytest.approx(e_uncached["val"]["loss"], rel=1e-5)
        assert e_cached["val"]["acc1"] == e_uncached["val"]["acc1"]


def test_confusion_metrics_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    r = torchtl._C.engine.confusion_metrics(target, pred, 3)
    # rows: target; target 1 sits at (0,2), (0,3), (1,3), predicted 1, 1, 0
    expected = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    assert torch.equal(r["confusion"], expected)
    iou = [1 / (2 + 3 - 1), 2 / (3 + 3 - 2), 1 / (2 + 1 - 1)]
    assert r["iou"] == pytest.approx(iou)
    assert r["miou"] == pytest.approx(sum(iou) / 3)
    assert r["pixel_acc"] == pytest.approx(4 / 7)


def test_checkpoints_resume_and_weights_out(cls_map, tmp_path):
    base = torchtl.models.resnet18(num_classes=2)
    kwargs = dict(optimizer="sgd", lr=0.01, momentum=0.9, device="cpu", seed=0, progress=False)
    full = copy.deepcopy(base)
    torchtl.engine.fit(full, loader(cls_map), loader(cls_map, shuffle=False), epochs=3, **kwargs)

    part = copy.deepcopy(base)
    run = tmp_path / "run"
    torchtl.engine.fit(part, loader(cls_map), loader(cls_map, shuffle=False), epochs=1, checkpoint_dir=run, **kwargs)
    assert {"best.pt", "history.json", "last.pt", "metrics.csv"} <= set(os.listdir(run))
    resumed = torchtl.models.resnet18(num_classes=2)  # other initial weights: the checkpoint wins
    h = torchtl.engine.fit(resumed, loader(cls_map), loader(cls_map, shuffle=False), epochs=3, checkpoint_dir=run,
                           resume=run / "last.pt", **kwargs)
    assert [e["epoch"] for e in h["epochs"]] == [1, 2, 3]  # the earlier epoch kept, counted from 1
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k

    ckpt = torch.load(run / "last.pt")  # weights_only: plain dicts and tensors
    assert ckpt["epoch"] == 3 and ckpt["config"]["optimizer"] == "sgd"
    tv = torchvision.models.resnet18(num_classes=2)
    tv.load_state_dict(ckpt["model"])
    tv.load_state_dict(torch.load(run / "best.pt"))


def test_evaluate_and_bad_arguments(cls_map, tmp_path):
    m = torchtl.models.resnet18(num_classes=2)
    r = torchtl.engine.evaluate(m, loader(cls_map, shuffle=False), device="cpu")
    assert set(r) >= {"loss", "acc1", "acc5", "confusion"} and r["confusion"].shape == (2, 2)
    assert r["confusion"].sum() == 16
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        torchtl.engine.fit(m, loader(cls_map), optimizer="rmsprop", device="cpu", progress=False)
    with pytest.raises(ValueError, match="num_classes mismatch"):
        torchtl.engine.fit(torchtl.models.resnet18(num_classes=1), loader(cls_map), device="cpu", progress=False)
    with pytest.raises(ValueError, match="yields no batch"):
        torchtl.engine.fit(m, loader(cls_map, batch_size=64, drop_last=True), device="cpu", progress=False)
    with pytest.raises(ValueError, match="unknown mode"):
        torchtl.engine.fit(m, loader(cls_map), mode="frozen", device="cpu", progress=False)
    with pytest.raises(TypeError, match="torch.utils.data.DataLoader or an iterable"):
        torchtl.engine.fit(m, 42, device="cpu", progress=False)


def test_ctrl_c_stops_between_batches_and_keeps_last_checkpoint(cls_map, tmp_path):
    import _thread
    import threading

    m = torchtl.models.resnet18(num_classes=2)
    fired = []

    def progress(p):
        # Ctrl-C from another thread, as a terminal delivers it, once two epochs are done.
        if p["epoch"] >= 3 and not fired:  # epochs count from 1
            fired.append(p["epoch"])
            # Joined, so the interrupt is pending before training goes on: on a loaded machine the
            # timer thread could otherwise first run after the last epoch (seen once in make test).
            ctrl_c = threading.Timer(0.0, _thread.interrupt_main)
            ctrl_c.start()
            ctrl_c.join()

    # A process started in the background by a non-interactive shell (`make test &`, some CI
    # runners) inherits SIGINT ignored, and then interrupt_main does nothing: a terminal's Ctrl-C
    # reaches Python's default handler, so this test installs it for its duration.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as stopped:
            torchtl.engine.fit(m, loader(cls_map), epochs=50, lr=0.001, device="cpu", checkpoint_dir=tmp_path,
                               progress=progress)
    finally:
        signal.signal(signal.SIGINT, previous)
    ckpt = torch.load(tmp_path / "last.pt")
    # The Ctrl-C came during epoch 3 (fired[0]): that epoch is not checkpointed, so last.pt holds
    # epoch 2; one epoch later is allowed for a signal the loaded machine delivers late.
    assert ckpt["epoch"] in (fired[0] - 1, fired[0]), (ckpt["epoch"], fired)
    assert f"after {ckpt['epoch']} of 50 epochs" in str(stopped.value)
    assert str(tmp_path / "last.pt") in str(stopped.value)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["interrupted"] and len(history["epochs"]) == ckpt["epoch"] + 1
    # The model stays usable and resumable after the interrupt.
    h = torchtl.engine.fit(m, loader(cls_map), epochs=ckpt["epoch"] + 1, lr=0.001, device="cpu",
                           checkpoint_dir=tmp_path, resume=tmp_path / "last.pt", progress=False)
    assert [e["epoch"] for e in h["epochs"]] == list(range(1, ckpt["epoch"] + 2))
    assert not any(e.get("interrupted") for e in h["epochs"])


def test_progress_callback_can_stop_and_errors_propagate(cls_map):
    m = torchtl.models.resnet18(num_classes=2)
    calls = []
    h = torchtl.engine.fit(m, loader(cls_map), epochs=3, device="cpu", progress=lambda p: calls.append(p) or False)
    assert h["interrupted"] and len(h["epochs"]) == 1 and calls[0]["training"]

    def broken(p):
        raise RuntimeError("progress hook failed")

    with pytest.raises(RuntimeError, match="progress hook failed"):
        torchtl.engine.fit(m, loader(cls_map), epochs=1, device="cpu", progress=broken)


@pytest.mark.cuda
def test_cuda_amp_channels_last(cls_map):
    m = torchtl.models.resnet18(num_classes=2)
    h = torchtl.engine.fit(m, loader(cls_map), epochs=2, device="cuda", amp="fp16", channels_last=True, progress=False)
    losses = [s for e in h["epochs"] for s in e["step_losses"]]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert next(m.parameters()).is_cuda
