"""LibTorch train/evaluate loops, driven from Python.

``fit`` runs every epoch in C++ (torchtl::engine::fit) with the GIL released: batches come from
the C++ threads of a ``torchtl.data.DataLoader``, and Python is called back only to draw the
progress bar. Ctrl-C stops the run between batches; ``last.pt`` then holds the last complete
epoch and ``resume=`` continues from it. ``torchtl.reference`` holds the same loops in plain
PyTorch, with the same signatures and return values, for side-by-side comparisons.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from torchtl import _C

__all__ = ["fit", "evaluate", "default_device"]

_E = _C.engine


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _process_group(device: Optional[str]):
    """torch.distributed's default group, joined as it is or first initialized from torchrun's
    environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); None when training in one process."""
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
            return None
        cuda = str(device or default_device()).startswith("cuda")
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if dist.get_world_size() == 1:
        return None
    backend = str(dist.get_backend())
    if device is not None and not str(device).startswith("cuda") and backend == "nccl":
        raise ValueError(f"device={device!r}, but the process group's backend is nccl, which reduces CUDA tensors only; "
                         "initialize it with backend='gloo' for the CPU")
    return dist.distributed_c10d._get_default_group()


def _rank_device(device: Optional[str], group) -> str:
    """Under torchrun, each rank takes the GPU its LOCAL_RANK names unless a device index was given."""
    device = device or default_device()
    if group is not None and str(device) == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', torch.distributed.get_rank() % torch.cuda.device_count()))}"
    return device


def _is_main_process(group) -> bool:
    return group is None or group.rank() == 0


def _cpp_model(model):
    cpp = getattr(model, "_cpp", None)
    if cpp is None:
        raise TypeError(f"torchtl.engine takes a torchtl model, got {type(model).__name__}; "
                        "torchtl.reference.fit trains any torch.nn.Module")
    return cpp


def _cpp_loader(loader, what: str):
    cpp = getattr(loader, "_cpp", None)
    if cpp is None:
        raise TypeError(f"{what} must be a torchtl.data.DataLoader, got {type(loader).__name__}")
    return cpp


def _deterministic(loader) -> bool:
    transform = getattr(loader.dataset, "transform", None)
    return transform is None or not transform.train


def _options(task, mode, optimizer, lr, momentum, weight_decay, nesterov, head_lr, epochs, lr_schedule, step_size,
             gamma, warmup_epochs, clip_grad_norm, label_smoothing, aux_weight, ignore_index, device, amp,
             channels_last, cache_features, checkpoint_dir, resume, seed):
    return dict(task=task, mode=mode, optimizer=optimizer, lr=float(lr), momentum=float(momentum),
                weight_decay=float(weight_decay), nesterov=bool(nesterov),
                head_lr=-1.0 if head_lr is None else float(head_lr), epochs=int(epochs), lr_schedule=lr_schedule,
                step_size=int(step_size), gamma=float(gamma), warmup_epochs=int(warmup_epochs),
                clip_grad_norm=float(clip_grad_norm or 0.0), label_smoothing=float(label_smoothing),
                aux_weight=float(aux_weight), ignore_index=int(ignore_index), device=str(device),
                amp=amp or "off", channels_last=bool(channels_last), cache_features=bool(cache_features),
                checkpoint_dir=os.fspath(checkpoint_dir) if checkpoint_dir else "",
                resume=os.fspath(resume) if resume else "", seed=int(seed))


class _Bar:
    """A tqdm bar per pass, fed by the C++ progress callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.key = None

    def __call__(self, p: dict) -> bool:
        if not self.enabled:
            return True
        from tqdm import tqdm

        key = (p["training"], p["epoch"])
        if key != self.key:
            self.close()
            what = "train" if p["training"] else "eval"
            self.bar = tqdm(total=p["num_batches"], desc=f"epoch {p['epoch'] + 1}/{p['epochs']} {what}", leave=False)
            self.key = key
        self.bar.n = p["batch"]
        postfix = {"loss": f"{p['loss']:.4f}"}
        if p["accuracy"] >= 0:
            postfix["acc"] = f"{p['accuracy']:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def fit(model, train_loader, val_loader=None, *, task: str = "classification", mode: str = "finetune",
        optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
        nesterov: bool = False, head_lr: Optional[float] = None, epochs: int = 1, lr_schedule: str = "constant",
        step_size: int = 7, gamma: float = 0.1, warmup_epochs: int = 0, clip_grad_norm: Optional[float] = None,
        label_smoothing: float = 0.0, aux_weight: float = 0.5, ignore_index: int = 255,
        device: Optional[str] = None, amp: Optional[str] = None, channels_last: Optional[bool] = None,
        cache_features: bool = True, checkpoint_dir=None, resume=None, seed: int = 0,
        progress=True) -> dict:
    """Trains ``model`` in C++ and returns the history (also written to ``checkpoint_dir/history.json``).

    mode: ``"scratch"`` or ``"finetune"`` (all layers train, from the weights the model was built with:
    none for scratch, pretrained ones to fine-tune) or
    ``"feature_extractor"`` (only the head trains: ``fc`` for ResNet, ``classifier``/``aux_classifier``
    for segmentation; the rest is frozen, runs in eval mode without grad, and stays frozen).
    With a deterministic train transform, feature_extractor trains the head on features cached
    in epoch 1 (``history["feature_cache"]`` says whether it did).
    lr_schedule: ``"constant"``, ``"step"`` (``gamma`` every ``step_size`` epochs), ``"cosine"`` or
    ``"poly"`` (per iteration, the segmentation recipe), after ``warmup_epochs`` of linear warm-up.
    amp (``"fp16"``/``"bf16"``) and channels_last apply on CUDA only; both default to off.
    progress: True for a tqdm bar, False for none, or a callable taking a dict (training, epoch,
    epochs, batch, num_batches, images, loss, accuracy), called between batches at most every
    0.2 s; returning False stops the run as Ctrl-C does.

    Under ``torchrun`` (or with torch.distributed's default group initialized) fit trains data-parallel:
    it joins the group, or initializes it from torchrun's environment (gloo on the CPU, nccl on CUDA,
    each rank on the GPU its LOCAL_RANK names); every rank starts from rank 0's weights, trains on its
    DistributedSampler-style shard of ``train_loader`` and averages gradients with c10d all-reduce in
    the C++ loop, so N ranks with batch B take the steps of one process with batch N*B. Validation is
    split into disjoint shards and its counts and confusion matrix are summed; the history is the
    whole run's. Only rank 0 writes ``checkpoint_dir`` and shows the bar; ``resume`` is read by all.
    """
    group = _process_group(device)
    device = _rank_device(device, group)
    if (amp not in (None, "off")) and not str(device).startswith("cuda"):
        raise ValueError(f"amp={amp!r} needs a CUDA device")
    cpp = _cpp_model(model)
    train_cpp = _cpp_loader(train_loader, "train_loader")
    val_cpp = _cpp_loader(val_loader, "val_loader") if val_loader is not None else None
    cache = bool(cache_features) and mode == "feature_extractor" and _deterministic(train_loader)
    options = _options(task, mode, optimizer, lr, momentum, weight_decay, nesterov, head_lr, epochs, lr_schedule,
                       step_size, gamma, warmup_epochs, clip_grad_norm, label_smoothing, aux_weight, ignore_index,
                       device, amp, channels_last, cache, checkpoint_dir, resume, seed)
    options["process_group"] = group
    model.to(device)  # in Python first, so every mirror follows
    bar = progress if callable(progress) else _Bar(bool(progress) and _is_main_process(group))
    try:
        result = _E.fit(cpp, train_cpp, val_cpp, options, bar)
    finally:
        if isinstance(bar, _Bar):
            bar.close()
        model._tree.invalidate()  # C++ changed train/eval flags; resync on the next forward
    if hasattr(train_loader, "epoch"):
        train_loader.set_epoch(len(result["epochs"]))
    history = {
        "engine": "torchtl",
        "task": task,
        "mode": mode,
        "device": str(device),
        "feature_cache": any(e["feature_cache"] for e in result["epochs"]),
        "best_metric": result["best_metric"],
        "best_epoch": result["best_epoch"],
        "interrupted": result["interrupted"],
        "epochs": [{k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in e.items() if k != "val"}
                   | ({"val": _plain(e["val"])} if "val" in e else {}) for e in result["epochs"]],
    }
    if checkpoint_dir and _is_main_process(group):
        with open(os.path.join(os.fspath(checkpoint_dir), "history.json"), "w") as f:
            json.dump(history, f, indent=1)
    if group is not None:
        torch.distributed.barrier()  # fit returns on every rank once rank 0's files are complete
    if result["keyboard_interrupt"]:
        raise KeyboardInterrupt("training stopped between batches; last.pt holds the last complete epoch")
    return history


def _plain(metrics: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


def evaluate(model, loader, *, task: str = "classification", device: Optional[str] = None,
             ignore_index: int = 255, progress: bool = False) -> dict:
    """One evaluation pass in C++: ``{"loss", "acc1", "acc5", "confusion"}`` for classification,
    ``{"loss", "pixel_acc", "miou", "iou", "confusion"}`` for segmentation (torchvision references'
    confusion-matrix metrics)."""
    group = _process_group(device)
    device = _rank_device(device, group)
    model.to(device)
    options = dict(task=task, device=str(device), ignore_index=int(ignore_index), process_group=group)
    bar = _Bar(progress and _is_main_process(group))
    try:
        result = _E.evaluate(_cpp_model(model), _cpp_loader(loader, "loader"), options, bar)
    finally:
        bar.close()
        model._tree.invalidate()
    return result
