"""C++ engine vs Python twin on the same data, the same starting weights and the same seed.

Each comparison trains a torchtl model with ``torchtl.engine.fit`` and its torchvision twin
(``model.to_torchvision()``, taken before training, so both start from identical weights) with
``torchtl.reference.fit``, on loaders built identically, and writes a report folder:
``report.md`` (the table), ``report.json`` (every number), ``curves.png`` and, for segmentation,
overlays of predicted masks. Used by ``examples/*_compare.py``, ``examples/demo.py`` and
``torchtl compare``.
"""
from __future__ import annotations

import filecmp
import json
import os
import time
import warnings

import torch

import torchtl
from torchtl import _C, data

__all__ = ["classification_loaders", "segmentation_loaders", "compare_classification", "compare_segmentation",
           "format_table", "resolve_map", "PALETTE"]

SCENARIOS = ("scratch", "finetune", "feature_extractor")

# VOC's colour map, so real VOC masks and the demo's look alike.
# The VOC palette overlays draw classes in (csrc/predict/overlay.h, which draws the C++ programs' overlays too).
PALETTE = _C.voc_palette()


def resolve_map(path, out_dir, name: str) -> str:
    """A map file as given, or one written into ``out_dir`` for an ImageFolder/VOC folder.

    A map file (and classes file) already in ``out_dir`` is kept when it lists the same samples,
    and is never overwritten with others: a run folder keeps the data its run was trained on.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no map file or image folder at '{path}'")
    os.makedirs(out_dir, exist_ok=True)
    map_path = os.path.join(out_dir, f"{name}.txt")
    layout_voc = os.path.isdir(os.path.join(path, "JPEGImages"))
    new_map, new_classes = os.path.join(out_dir, f".{name}.txt.new"), os.path.join(out_dir, f".{name}_classes.txt.new")
    try:
        data.write_map_file(path, new_map, split=name if layout_voc else "train", classes_path=new_classes)
        pairs = [(new_map, map_path)] + ([] if layout_voc else [(new_classes, data.classes_path_for(map_path))])
        for new, final in pairs:
            if os.path.exists(final) and not filecmp.cmp(new, final, shallow=False):
                raise FileExistsError(f"{final} already lists other samples than {path} does now; "
                                      f"it is kept: use another output folder")
        for new, final in pairs:
            os.replace(new, final)
    finally:
        for leftover in (new_map, new_classes):
            if os.path.exists(leftover):
                os.remove(leftover)
    return map_path


def classification_loaders(train_map, val_map, *, size=64, batch_size=8, workers=2, seed=0, augment=True,
                           resize_size=None):
    if resize_size is None:
        resize_size = size if size < 128 else size * 256 // 224
    train_t = (data.classification_transform(train=True, size=size, scale=(0.6, 1.0)) if augment
               else data.classification_transform(train=False, size=size, resize_size=resize_size))
    train_ds = data.MapDataset(train_map, transform=train_t, seed=seed)
    val_ds = data.MapDataset(val_map, transform=data.classification_transform(train=False, size=size,
                                                                               resize_size=resize_size),
                             num_classes=train_ds.num_classes)
    train = data.DataLoader(train_ds, batch_size, shuffle=True, num_workers=workers, seed=seed,
                            drop_last=len(train_ds) > batch_size)
    val = data.DataLoader(val_ds, batch_size, shuffle=False, num_workers=workers, seed=seed)
    return train, val


def segmentation_loaders(train_map, val_map, *, size=64, crop_size=None, batch_size=4, workers=2, seed=0,
                         num_classes=None):
    """Training crops of ``crop_size`` (default ``size``) after scaling ``size`` by 0.5x to 2x;
    evaluation at shorter side ``size``. ``num_classes`` makes a mask value the model cannot
    predict an error naming the mask file."""
    crop_size = size if crop_size is None else crop_size
    train_ds = data.SegmentationMapDataset(
        train_map, transform=data.segmentation_transform(train=True, base_size=size, crop_size=crop_size), seed=seed,
        num_classes=num_classes)
    val_ds = data.SegmentationMapDataset(val_map, transform=data.segmentation_transform(train=False, base_size=size),
                                         num_classes=num_classes)
    train = data.DataLoader(train_ds, batch_size, shuffle=True, num_workers=workers, seed=seed,
                            drop_last=len(train_ds) > batch_size)
    # batch 1: eval images keep their own aspect ratio (shorter side = size), as in the references.
    val = data.DataLoader(val_ds, 1, shuffle=False, num_workers=workers, seed=seed)
    return train, val


def _run_pair(build, loaders, fit_kwargs, progress, log, label):
    """Builds the start model once, clones it into its torchvision twin, trains both."""
    model = build()
    twin = model.to_torchvision()
    runs = {}
    for engine, m, fit in (("cpp", model, torchtl.engine.fit), ("python", twin, torchtl.reference.fit)):
        train, val = loaders()
        log(f"  {label}: {'C++ engine' if engine == 'cpp' else 'Python twin'} ...")
        start = time.perf_counter()
        history = fit(m, train, val, progress=progress, **fit_kwargs)
        history["wall_seconds"] = time.perf_counter() - start
        runs[engine] = history
    return model, twin, runs


def _summary(history, metric_keys):
    epochs = history["epochs"]
    train_images = sum(e["images"] for e in epochs)
    train_seconds = sum(e["seconds"] for e in epochs)
    out = {k: epochs[-1]["val"][k] for k in metric_keys}
    out.update(train_loss=epochs[-1]["train_loss"], wall_seconds=history["wall_seconds"],
               train_seconds=train_seconds, images_per_second=train_images / train_seconds if train_seconds else 0.0,
               best_epoch=history["best_epoch"], feature_cache=history.get("feature_cache", False))
    return out


def _agreement(runs):
    a = torch.tensor([s for e in runs["cpp"]["epochs"] for s in e["step_losses"]], dtype=torch.float64)
    b = torch.tensor([s for e in runs["python"]["epochs"] for s in e["step_losses"]], dtype=torch.float64)
    n = min(len(a), len(b))
    first = float((a[:1] - b[:1]).abs().max()) if n else 0.0
    return dict(first_step_loss_diff=first, max_step_loss_diff=float((a[:n] - b[:n]).abs().max()) if n else 0.0)


def _curves(path, rows, metric, metric_label):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: curves.png not written (pip install matplotlib)", stacklevel=3)
        return None
    fig, axes = plt.subplots(2, len(rows), figsize=(4.2 * len(rows), 6.4), squeeze=False)
    for col, row in enumerate(rows):
        for engine, style, name in (("cpp", "-", "C++ (torchtl.engine)"), ("python", "--", "Python (reference)")):
            epochs = row["history"][engine]["epochs"]
            x = [e["epoch"] for e in epochs]
            axes[0][col].plot(x, [e["train_loss"] for e in epochs], style, marker="o", label=f"{name} train")
            axes[0][col].plot(x, [e["val"]["loss"] for e in epochs], style, marker="s", label=f"{name} val")
            axes[1][col].plot(x, [e["val"][metric] for e in epochs], style, marker="o", label=name)
        axes[0][col].set_title(row["name"])
        axes[0][col].set_ylabel("loss")
        axes[1][col].set_ylabel(metric_label)
        axes[1][col].set_xlabel("epoch")
        axes[1][col].set_ylim(0, 1)
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def format_table(report) -> str:
    """The markdown table printed by the comparisons and written to report.md."""
    metric, label = report["metric"], report["metric_label"]
    head = (f"| scenario | {label} C++ | {label} Python | val loss C++ | val loss Python | time C++ (s) | "
            f"time Python (s) | img/s C++ | img/s Python | speedup | max step-loss diff |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in report["rows"]:
        c, p = row["cpp"], row["python"]
        lines.append(f"| {row['name']} | {c[metric]:.3f} | {p[metric]:.3f} | {c['loss']:.4f} | {p['loss']:.4f} | "
                     f"{c['wall_seconds']:.1f} | {p['wall_seconds']:.1f} | {c['images_per_second']:.1f} | "
                     f"{p['images_per_second']:.1f} | {row['speedup']:.2f}x | {row['max_step_loss_diff']:.2e} |")
    return "\n".join(lines)


def _write_report(out_dir, report, title, notes):
    os.makedirs(out_dir, exist_ok=True)
    table = report["table"] = format_table(report)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump({k: v for k, v in report.items() if k != "histories"}, f, indent=1)
    lines = [f"# {title}", "", table, ""]
    lines += [f"- {n}" for n in notes]
    if report.get("curves"):
        lines += ["", "![curves](curves.png)"]
    for overlay in report.get("overlays", []):
        lines += ["", f"![{overlay}]({overlay})"]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return table


def _settings_note(report):
    s = report["settings"]
    return ", ".join(f"{k}={v}" for k, v in s.items())


def compare_classification(train, val, out_dir, *, weights=None, arch="resnet18", scenarios=SCENARIOS, epochs=5,
                           batch_size=8, size=64, lr=0.01, head_lr=None, optimizer="sgd", momentum=0.9,
                           weight_decay=1e-4, lr_schedule="cosine", device="cpu", seed=0, workers=2,
                           progress=False, log=print) -> dict:
    """The three transfer-learning scenarios (scratch, finetune, feature_extractor), each through the C++ engine and the Python twin.

    ``weights`` (a traced archive, state dict or torchvision model with the same ``arch``) is the
    pretrained start of ``finetune`` and ``feature_extractor``; ``scratch`` starts from a seeded
    random initialisation. ``lr`` is one rate or ``{scenario: rate}`` (fine-tuning usually takes a
    smaller rate than training a new head). Returns the report (also written to ``out_dir``).
    """
    if weights is None and any(s != "scratch" for s in scenarios):
        raise ValueError("finetune and feature_extractor need --weights (a pretrained model of the same arch)")
    builder = getattr(torchtl.models, arch, None)
    if builder is None:
        raise ValueError(f"unknown arch '{arch}'")
    train_map = resolve_map(train, out_dir, "train")
    val_map = resolve_map(val, out_dir, "val")
    num_classes = data.count_classes(train_map)  # every line checked before the report folder is made
    data.count_classes(val_map)
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for scenario in scenarios:
        def build(scenario=scenario):
            torch.manual_seed(seed)  # the same fresh head (and scratch body) for both engines
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "re-initialised fc": intended here
                return builder(num_classes=num_classes, weights=None if scenario == "scratch" else weights)

        def loaders():
            return classification_loaders(train_map, val_map, size=size, batch_size=batch_size, workers=workers,
                                          seed=seed)

        fit_kwargs = dict(task="classification", mode=scenario, optimizer=optimizer,
                          lr=lr[scenario] if isinstance(lr, dict) else lr, momentum=momentum,
                          weight_decay=weight_decay, head_lr=head_lr, epochs=epochs, lr_schedule=lr_schedule,
                          device=device, seed=seed)
        _, _, runs = _run_pair(build, loaders, fit_kwargs, progress, log, scenario)
        row = dict(name=scenario, cpp=_summary(runs["cpp"], ("loss", "acc1", "acc5")),
                   python=_summary(runs["python"], ("loss", "acc1", "acc5")), history=runs, **_agreement(runs))
        row["speedup"] = row["python"]["wall_seconds"] / row["cpp"]["wall_seconds"]
        rows.append(row)
        log(f"  {scenario}: val acc C++ {row['cpp']['acc1']:.3f}, Python {row['python']['acc1']:.3f}; "
            f"{row['cpp']['wall_seconds']:.1f} s vs {row['python']['wall_seconds']:.1f} s")
    report = dict(task="classification", metric="acc1", metric_label="val acc", rows=rows,
                  settings=dict(arch=arch, epochs=epochs, batch_size=batch_size, size=size, lr=lr,
                                optimizer=optimizer, lr_schedule=lr_schedule, device=device, seed=seed,
                                train=train_map, val=val_map, weights=str(weights) if weights is not None else None))
    report["curves"] = _curves(os.path.join(out_dir, "curves.png"), rows, "acc1", "val accuracy") and "curves.png"
    for row in rows:
        row.pop("history")
    notes = ["C++ = torchtl.engine.fit on the torchtl model; Python = torchtl.reference.fit on its torchvision twin "
             "(same starting weights, loaders and seed). Time = wall time of fit (train + per-epoch validation); "
             "img/s = training images per second; speedup = Python time / C++ time.",
             "max step-loss diff = largest |C++ - Python| training loss over all steps; where it is 0 the C++ "
             "(solid) and Python (dashed) curves in curves.png lie on top of each other.",
             _settings_note(report)]
    report["table"] = _write_report(out_dir, report, "Transfer learning: C++ engine vs Python twin", notes)
    report["out_dir"] = os.fspath(out_dir)
    return report


def overlay(image_u8, mask, alpha=0.5):
    """Colours class indices (VOC palette; 255 = white border) over a uint8 3xHxW image."""
    return _C.overlay_mask(image_u8, mask, alpha)


def predict_masks(model, images, device="cpu"):
    model.to(device).eval()
    with torch.no_grad():
        return model(images.to(device))["out"].argmax(1).cpu()


def _write_overlays(out_dir, val_map, model, twin, size, device, count):
    from torchvision.io import write_png

    ds = data.SegmentationMapDataset(val_map, transform=data.segmentation_transform(train=False, base_size=size))
    raw = data.SegmentationMapDataset(val_map)
    names = []
    for i in range(min(count, len(ds))):
        x, target = ds[i]
        image_u8, _ = raw[i]
        resized = torch.nn.functional.interpolate(image_u8[None].float(), size=x.shape[-2:], mode="bilinear",
                                                  antialias=True).round().clamp(0, 255).to(torch.uint8)[0]
        tiles = [resized, overlay(resized, target)]
        for m in (model, twin):
            tiles.append(overlay(resized, predict_masks(m, x[None], device)[0]))
        gap = torch.full((3, resized.shape[1], 2), 255, dtype=torch.uint8)
        strip = torch.cat([t for tile in tiles for t in (tile, gap)][:-1], dim=2)
        zoom = max(1, 192 // strip.shape[1])  # small demo inputs: enlarge, pixels kept sharp
        strip = strip.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
        name = f"overlay_{i}.png"
        write_png(strip, os.path.join(out_dir, name))
        names.append(name)
    return names


def compare_segmentation(train, val, out_dir, *, arch="fcn_resnet50", num_classes=None, weights=None,
                         weights_backbone=None, epochs=3, batch_size=4, size=64, lr=0.02, aux_loss=False,
                         device="cpu", seed=0, workers=2, overlays=4, progress=False, log=print) -> dict:
    """fcn/deeplabv3 trained by the C++ engine and by the Python twin; mIoU and pixel accuracy."""
    builder = getattr(torchtl.segmentation, arch, None)
    if builder is None:
        raise ValueError(f"unknown segmentation arch '{arch}'")
    train_map = resolve_map(train, out_dir, "train")
    val_map = resolve_map(val, out_dir, "val")
    os.makedirs(out_dir, exist_ok=True)
    if num_classes is None and weights is None:
        raise ValueError("num_classes is needed (or weights holding the head)")

    def build():
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return builder(num_classes=num_classes, aux_loss=aux_loss, weights=weights,
                           weights_backbone=weights_backbone)

    def loaders():
        return segmentation_loaders(train_map, val_map, size=size, batch_size=batch_size, workers=workers, seed=seed,
                                    num_classes=num_classes)

    fit_kwargs = dict(task="segmentation", mode="finetune" if (weights or weights_backbone) else "scratch",
                      optimizer="sgd", lr=lr, momentum=0.9, weight_decay=1e-4, epochs=epochs, lr_schedule="poly",
                      device=device, seed=seed)
    model, twin, runs = _run_pair(build, loaders, fit_kwargs, progress, log, arch)
    row = dict(name=f"{arch} ({fit_kwargs['mode']})", cpp=_summary(runs["cpp"], ("loss", "miou", "pixel_acc")),
               python=_summary(runs["python"], ("loss", "miou", "pixel_acc")), history=runs, **_agreement(runs))
    row["speedup"] = row["python"]["wall_seconds"] / row["cpp"]["wall_seconds"]
    log(f"  {arch}: mIoU C++ {row['cpp']['miou']:.3f}, Python {row['python']['miou']:.3f}; "
        f"{row['cpp']['wall_seconds']:.1f} s vs {row['python']['wall_seconds']:.1f} s")
    report = dict(task="segmentation", metric="miou", metric_label="mIoU", rows=[row],
                  settings=dict(arch=arch, num_classes=num_classes, epochs=epochs, batch_size=batch_size, size=size,
                                lr=lr, aux_loss=aux_loss, device=device, seed=seed, train=train_map, val=val_map))
    os.makedirs(out_dir, exist_ok=True)
    report["curves"] = _curves(os.path.join(out_dir, "curves.png"), [row], "miou", "val mIoU") and "curves.png"
    report["overlays"] = _write_overlays(out_dir, val_map, model, twin, size, device, overlays)
    row.pop("history")
    notes = ["C++ = torchtl.engine.fit; Python = torchtl.reference.fit on the torchvision twin (same start, loaders, "
             "seed). Pixel accuracy C++ / Python: "
             f"{row['cpp']['pixel_acc']:.3f} / {row['python']['pixel_acc']:.3f}.",
             "Overlays: image | ground truth | C++ prediction | Python prediction (VOC colours, white = void).",
             _settings_note(report)]
    report["table"] = _write_report(out_dir, report, "Segmentation: C++ engine vs Python twin", notes)
    report["out_dir"] = os.fspath(out_dir)
    return report
