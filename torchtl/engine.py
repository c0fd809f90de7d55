"""LibTorch train/evaluate loops, driven from Python.

``fit`` runs every epoch in C++ (torchtl::engine::fit) with the GIL released: batches come from
the C++ threads of a ``torchtl.data.DataLoader``, and Python is called back only to draw the
progress bar and, as each epoch ends, to print its line and append it to the logs. Ctrl-C stops
the run between batches; ``last.pt`` then holds the last complete epoch and ``resume=``
continues from it, and every log with it. Epochs count from 1, on the screen and in the logs.

What ``fit`` takes beyond torchtl's own pieces:

- any ``torch.utils.data.DataLoader`` or sized iterable of ``(images, targets)``: each batch is
  fetched from Python under the GIL, then the step runs in C++. Slower than torchtl's loader,
  whose threads decode without the GIL;
- an ``nn.Sequential`` of layers torchtl can move into C++ (Conv2d, BatchNorm2d, ReLU,
  MaxPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Linear) trains wholly in C++ over the module's
  own tensors; any other ``nn.Module`` keeps its Python forward, which the C++ loop calls under
  the GIL (loss, backward and optimizer steps stay in C++);
- a ``torch.optim.SGD``, ``Adam``, ``AdamW`` or ``RMSprop`` instance: its parameter groups and
  hyperparameters run in LibTorch's optimizer of the same kind (the instance itself is not
  stepped, and its state stays empty; the C++ optimizer's state is saved in ``last.pt``).

``torchtl.reference`` holds the same loops in plain PyTorch, with the same signatures and
return values, for side-by-side comparisons.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch
from torch import nn

from torchtl import _C, _runlog, model_file

__all__ = ["fit", "evaluate", "default_device", "process_group"]

# torch.optim classes whose step LibTorch runs the same way, by the kind the C++ engine knows.
_OPTIMIZER_KINDS = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw",
                    torch.optim.RMSprop: "rmsprop"}
# The string form's hyperparameters: the C++ options' defaults.
_STRING_DEFAULTS = {k: _C.engine.FIT_OPTIONS[k] for k in ("lr", "momentum", "weight_decay", "nesterov")}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def process_group(device: Optional[str] = None):
    """The process group ``fit`` trains over: torch.distributed's default group, joined as it is or
    first initialized from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; gloo
    for the CPU, nccl for CUDA); None when training in one process."""
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
    """The C++ module fit trains: torchtl's own, a C++ Sequential over the model's tensors, or
    a C++ module that calls the model's Python forward."""
    cpp = getattr(model, "_cpp", None)
    if cpp is not None:
        return cpp
    if not isinstance(model, nn.Module):
        raise TypeError(f"torchtl.engine trains a torch.nn.Module, got {type(model).__name__}")
    hooked = any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                 for m in model.modules())
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward and not hooked:
        from torchtl._module import to_cpp

        try:
            return to_cpp(model)
        except TypeError:
            pass  # a layer C++ does not have: the Python forward runs instead (so do hooks)
    return _C.engine.python_module(model)


def _sync_bn(model, sync_bn: Optional[bool], group) -> bool:
    """``sync_bn`` as given, or as the model's layers say: a torchtl ResNet built with
    ``norm_layer=nn.SyncBatchNorm`` runs those layers in C++ as BatchNorm2d, which synchronise over
    the ranks only through this option."""
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    # A model whose forward is Python's runs torch's SyncBatchNorm itself; in one process it is BatchNorm2d.
    if not hasattr(model, "_tree") or nn.SyncBatchNorm not in kinds or group is None:
        return bool(sync_bn)
    if sync_bn is False:
        raise ValueError("sync_bn=False, but the model's norm layers are torch.nn.SyncBatchNorm; pass sync_bn=True "
                         "or build the model with BatchNorm2d")
    if sync_bn is None and len(kinds) > 1:
        raise ValueError("the model mixes torch.nn.SyncBatchNorm with other batch norm layers, and torchtl synchronises "
                         "every BatchNorm2d that trains or none: pass sync_bn=True or sync_bn=False")
    return True


def _source(loader, what: str, need_len: bool):
    """torchtl's C++ loader, or (iterator factory, batches per epoch, name) for a Python iterable."""
    cpp = getattr(loader, "_cpp", None)
    if cpp is not None:
        return cpp
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"{what} must be a torchtl.data.DataLoader, a torch.utils.data.DataLoader or an iterable of "
                        f"(images, targets), got {type(loader).__name__}")
    try:
        n = len(loader)
    except TypeError:
        if need_len:
            raise TypeError(f"{what} ({type(loader).__name__}) has no len(); fit needs the number of batches per "
                            "epoch for its lr schedule: pass a list or a DataLoader") from None
        n = 0
    return (lambda epoch: iter(loader), n, what)


def _deterministic(loader) -> bool:
    transform = getattr(getattr(loader, "dataset", None), "transform", None)
    return getattr(loader, "_cpp", None) is not None and (transform is None or not transform.train)


def optimizer_groups(optimizer) -> tuple[str, list]:
    """The LibTorch kind and parameter groups of a torch.optim optimizer (fit's ``param_groups``)."""
    kind = _OPTIMIZER_KINDS.get(type(optimizer))
    if kind is None:
        supported = ", ".join(f"torch.optim.{c.__name__}" for c in _OPTIMIZER_KINDS)
        raise TypeError(f"optimizer must be 'sgd', 'adam', 'adamw' or one of {supported} (their steps run in "
                        f"LibTorch's optimizer of the same kind), got {type(optimizer).__module__}."
                        f"{type(optimizer).__qualname__}")
    if optimizer.state:
        raise ValueError(f"the {type(optimizer).__name__} has already stepped; fit starts the C++ optimizer from an "
                         "empty state: pass a fresh optimizer, or resume= a last.pt to continue a run's state")
    groups = []
    for i, g in enumerate(optimizer.param_groups):
        for flag in ("maximize", "capturable", "differentiable", "fused"):
            if g.get(flag):
                raise ValueError(f"param group {i} of the {type(optimizer).__name__} sets {flag}=True, which "
                                 "LibTorch's optimizer does not have")
        group = dict(params=list(g["params"]), lr=float(g["lr"]), weight_decay=float(g["weight_decay"]))
        if kind == "sgd":
            group.update(momentum=float(g["momentum"]), dampening=float(g["dampening"]), nesterov=bool(g["nesterov"]))
        elif kind in ("adam", "adamw"):
            if g.get("decoupled_weight_decay"):  # torch.optim.Adam(decoupled_weight_decay=True) is AdamW
                kind = "adamw"
            elif kind == "adamw":
                raise ValueError(f"param group {i} of the AdamW sets decoupled_weight_decay=False")
            group.update(beta1=float(g["betas"][0]), beta2=float(g["betas"][1]), eps=float(g["eps"]),
                         amsgrad=bool(g["amsgrad"]))
        else:
            group.update(alpha=float(g["alpha"]), eps=float(g["eps"]), momentum=float(g["momentum"]),
                         centered=bool(g["centered"]))
        groups.append(_param_group(group))
    if kind == "adamw" and any(not g.get("decoupled_weight_decay") for g in optimizer.param_groups):
        raise ValueError("an Adam whose param groups mix decoupled_weight_decay values has no LibTorch equivalent")
    return kind, groups


def _param_group(values: dict):
    group = _C.engine.ParamGroup()
    for name, value in values.items():
        setattr(group, name, value)
    return group


def check_run_arguments(optimizer, lr, momentum, weight_decay, nesterov, head_lr, seed, max_nonfinite_losses):
    """The string form's hyperparameters with their defaults, or a clear error where they clash
    with an optimizer instance (whose param groups carry its own)."""
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if int(max_nonfinite_losses) <= 0:
        raise ValueError(f"max_nonfinite_losses must be positive, got {max_nonfinite_losses}")
    given = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if isinstance(optimizer, str):
        return {k: _STRING_DEFAULTS[k] if v is None else v for k, v in given.items()}
    clashing = [k for k, v in dict(given, head_lr=head_lr).items() if v is not None]
    if clashing:
        raise ValueError(f"{', '.join(clashing)} set the optimizer given by name; a {type(optimizer).__name__} "
                         "instance carries its own in its param groups")
    return dict(_STRING_DEFAULTS)


def _class_weights(class_weights):
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights, dtype=torch.float32).detach().cpu()
    if w.dim() != 1:
        raise ValueError(f"class_weights must be one weight per class, got shape {tuple(w.shape)}")
    return w


class _Bar:
    """A tqdm bar per pass, fed by the C++ progress callback; epoch lines print above it."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.key = None

    def __call__(self, p: dict) -> bool:
        if not self.enabled:
            return True
        from tqdm.auto import tqdm

        key = (p["training"], p["epoch"])
        if key != self.key:
            self.close()
            what = "train" if p["training"] else "eval"
            self.bar = tqdm(total=p["num_batches"] or None, desc=f"epoch {p['epoch']}/{p['epochs']} {what}",
                            leave=False, dynamic_ncols=True)
            self.key = key
        self.bar.n = p["batch"]
        postfix = {"loss": f"{p['loss']:.4f}"}
        if p["accuracy"] >= 0:
            postfix["acc"] = f"{p['accuracy']:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()
        return True

    def write(self, line: str) -> None:
        """A lasting line: printed above the bar, which tqdm redraws below it."""
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_dict(p) -> dict:
    """What a progress callback sees; epochs count from 1, as on the screen and in history.json."""
    return dict(training=p.training, epoch=p.epoch + 1, epochs=p.epochs, batch=p.batch, num_batches=p.num_batches,
                images=p.images, loss=p.loss, accuracy=p.accuracy)


def _eval_dict(r, segmentation: bool) -> dict:
    d = dict(loss=r.loss, skipped=len(r.skipped))
    if segmentation:
        d.update(pixel_acc=r.pixel_accuracy, miou=r.mean_iou, iou=r.iou)
    else:
        d.update(acc1=r.acc1, acc5=r.acc5)
    d.update(confusion=r.confusion, images=r.images, seconds=r.seconds)
    return d


def _epoch_dict(r, segmentation: bool) -> dict:
    """An epoch of the history; epochs count from 1, as on the screen and in history.json."""
    d = dict(epoch=r.epoch + 1, lr=r.lr, train_loss=r.train_loss)
    if not segmentation:
        d["train_acc"] = r.train_acc
    d.update(step_losses=r.step_losses, nonfinite_losses=r.nonfinite_losses, skipped=len(r.skipped), images=r.images,
             seconds=r.seconds, images_per_second=r.images_per_second, feature_cache=r.used_feature_cache)
    if r.has_val:
        d["val"] = _eval_dict(r.val, segmentation)
    d.update(best_metric=r.best_metric, best_epoch=r.best_epoch + 1)
    return d


def _resume_epoch(resume) -> int:
    """The epoch a last.pt was written after, read in Python only for the logs (C++ checks the rest)."""
    path = os.fspath(resume)
    if not os.path.exists(path):
        raise FileNotFoundError(f"resume: no such file '{path}'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"resume: cannot read '{path}' (a truncated or corrupt file, or not one torch.save wrote): "
                         f"{e}") from e
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in ("model", "optimizer", "epoch")):
        raise ValueError(f"resume: '{path}' is not a checkpoint written by fit: resume needs the last.pt of a "
                         "checkpoint_dir; best.pt and other state dicts hold weights only (load those into the model "
                         "instead)")
    return int(ckpt["epoch"])


def fit(model, train_loader, val_loader=None, *, task: str = "classification", mode: str = "finetune",
        optimizer="sgd", lr: Optional[float] = None, momentum: Optional[float] = None,
        weight_decay: Optional[float] = None, nesterov: Optional[bool] = None, head_lr: Optional[float] = None,
        epochs: int = 1, lr_schedule: str = "constant", step_size: int = 7, gamma: float = 0.1,
        warmup_epochs: int = 0, clip_grad_norm: Optional[float] = None, label_smoothing: float = 0.0,
        class_weights=None, aux_weight: float = 0.5, ignore_index: int = 255, device: Optional[str] = None,
        amp: Optional[str] = None, channels_last: Optional[bool] = None, cache_features: bool = True,
        sync_bn: Optional[bool] = None, checkpoint_dir=None, resume=None, tensorboard=None,
        max_nonfinite_losses: int = 10, seed: int = 0, progress=True) -> dict:
    """Trains ``model`` in C++ and returns the history (also written to ``checkpoint_dir/history.json``).

    model: a torchtl model, an ``nn.Sequential`` of layers torchtl moves into C++, or any other
    ``nn.Module`` (its Python forward is called from the C++ loop; classification only).
    train_loader/val_loader: a ``torchtl.data.DataLoader`` (fastest), or any ``torch.utils.data.DataLoader``
    or sized iterable of ``(images, targets)`` (fetched under the GIL).
    mode: ``"scratch"`` or ``"finetune"`` (all layers train, from the weights the model was built with:
    none for scratch, pretrained ones to fine-tune) or
    ``"feature_extractor"`` (only the head trains: ``fc`` for ResNet, ``classifier``/``aux_classifier``
    for segmentation; the rest is frozen, runs in eval mode without grad, and stays frozen).
    With a deterministic train transform, feature_extractor trains the head on features cached
    in epoch 1 (``history["feature_cache"]`` says whether it did).
    optimizer: ``"sgd"``, ``"adam"``, ``"adamw"`` with ``lr`` (0.01), ``momentum`` (0.9, SGD),
    ``weight_decay`` (0), ``nesterov`` and ``head_lr``; or a ``torch.optim.SGD``/``Adam``/``AdamW``/
    ``RMSprop`` over the model's parameters, whose param groups then set all of these.
    lr_schedule: ``"constant"``, ``"step"`` (``gamma`` every ``step_size`` epochs), ``"cosine"`` or
    ``"poly"`` (per iteration, the segmentation recipe), after ``warmup_epochs`` of linear warm-up;
    it scales every param group's lr.
    class_weights: one loss weight per class (``nn.CrossEntropyLoss(weight=)``).
    amp: ``"bf16"`` autocasts the forward passes on the CPU (on CPUs with AVX-512 BF16 or AMX; others
    raise) and CUDA, ``"fp16"`` on CUDA (with gradient scaling); default off (fp32).
    channels_last (default True): the fast path of ``torchtl.fast_path`` (weights and batches in
    channels_last during the run, batch norm folded for evaluation); False runs in exact mode.
    checkpoint_dir: ``last.pt`` (each epoch), ``best.pt`` (best finite validation metric of a finite
    model; for a model of a torchtl builder, a model file that ``torchtl.load_model`` and
    ``torchtl.Predictor`` open alone, see ``torchtl.model_file``), ``history.json``, ``metrics.csv`` and, when tensorboard is installed, TensorBoard events in
    ``tensorboard/``. A new run refuses a checkpoint_dir holding an earlier run's files;
    ``resume=checkpoint_dir/last.pt`` continues that run and appends to its logs.
    tensorboard: None (events when tensorboard is installed and there is a checkpoint_dir), False,
    True (required), or a log dir.
    max_nonfinite_losses: a NaN or infinite loss skips its step and warns (RuntimeWarning) the first
    time; the run stops with a RuntimeError at this many.
    progress: True for tqdm bars and a lasting line per epoch, False for none, or a callable taking a
    dict (training, epoch (from 1), epochs, batch, num_batches, images, loss, accuracy), called between
    batches at most every 0.2 s; returning False stops the run as Ctrl-C does.

    Under ``torchrun`` (or with torch.distributed's default group initialized) fit trains data-parallel:
    it joins the group, or initializes it from torchrun's environment (gloo on the CPU, nccl on CUDA,
    each rank on the GPU its LOCAL_RANK names); every rank starts from rank 0's weights, trains on its
    DistributedSampler-style shard of a ``torchtl.data.DataLoader`` (another iterable must be sharded
    by the caller, with as many batches on every rank) and averages gradients with c10d all-reduce in
    the C++ loop, so N ranks with batch B take the steps of one process with batch N*B. Validation is
    split into disjoint shards and its counts and confusion matrix are summed; the history is the
    whole run's. Only rank 0 writes ``checkpoint_dir`` and its logs and shows the bars; ``resume`` is
    read by all.

    sync_bn: True runs ``torch.nn.SyncBatchNorm``'s computation, as torchvision's references' ``--sync-bn``:
    while training, every BatchNorm2d that trains normalises with the statistics of the global batch over
    all ranks (gloo on the CPU too, unlike torch's module), and backward reduces its gradient sums the
    same way. Evaluation, checkpoints and the model afterwards keep plain BatchNorm2d; in one process
    nothing changes. A model with no BatchNorm2d that trains (FrozenBatchNorm2d, the frozen backbone of
    feature_extractor mode with a ResNet's ``fc`` head, a model whose forward is Python's) raises ValueError.
    The default (None) is True for a torchtl model built with ``norm_layer=nn.SyncBatchNorm``.
    """
    hyper = check_run_arguments(optimizer, lr, momentum, weight_decay, nesterov, head_lr, seed, max_nonfinite_losses)
    group = process_group(device)
    device = _rank_device(device, group)
    main = _is_main_process(group)
    if resume:
        resume_epoch = _resume_epoch(resume)
    else:
        resume_epoch = None
        _runlog.check_fresh_dir(checkpoint_dir)
    if isinstance(optimizer, str):
        kind, groups = optimizer, []
    else:
        kind, groups = optimizer_groups(optimizer)
    model.to(device)  # in Python first, so every mirror follows
    cpp = _cpp_model(model)
    train_src = _source(train_loader, "train_loader", need_len=True)
    val_src = _source(val_loader, "val_loader", need_len=False) if val_loader is not None else None
    cache = bool(cache_features) and mode == "feature_extractor" and _deterministic(train_loader)
    defaults = _C.engine.FIT_OPTIONS
    options = dict(task=task, mode=mode, optimizer=kind, param_groups=groups, lr=float(hyper["lr"]),
                   momentum=float(hyper["momentum"]), weight_decay=float(hyper["weight_decay"]),
                   nesterov=bool(hyper["nesterov"]), head_lr=defaults["head_lr"] if head_lr is None else float(head_lr),
                   epochs=int(epochs), lr_schedule=lr_schedule, step_size=int(step_size), gamma=float(gamma),
                   warmup_epochs=int(warmup_epochs), clip_grad_norm=float(clip_grad_norm or defaults["clip_grad_norm"]),
                   label_smoothing=float(label_smoothing), class_weights=_class_weights(class_weights),
                   max_nonfinite_losses=int(max_nonfinite_losses), aux_weight=float(aux_weight),
                   ignore_index=int(ignore_index), device=str(device), amp=amp or defaults["amp"],
                   channels_last=defaults["channels_last"] if channels_last is None else bool(channels_last),
                   cache_features=cache, sync_bn=_sync_bn(model, sync_bn, group),
                   checkpoint_dir=os.fspath(checkpoint_dir) if checkpoint_dir else "",
                   resume=os.fspath(resume) if resume else "", seed=int(seed), process_group=group,
                   model_metadata=model_file.fit_metadata(model, train_loader, val_loader))
    bar = progress if callable(progress) else _Bar(bool(progress) and main)
    log = _runlog.RunLog({"engine": "torchtl", "task": task, "mode": mode, "device": str(device), "feature_cache": False},
                         epochs=int(epochs), checkpoint_dir=checkpoint_dir, resume_epoch=resume_epoch,
                         tensorboard=tensorboard, writes=main, echo=bar.write if isinstance(bar, _Bar) and bar.enabled else None)
    segmentation = task == "segmentation"
    try:
        fitted, keyboard_interrupt = _C.engine.fit(cpp, train_src, val_src, lambda p: bar(_progress_dict(p)),
                                                   lambda r: log.epoch_end(_epoch_dict(r, segmentation)), **options)
    except BaseException:
        log.finish()
        raise
    finally:
        if isinstance(bar, _Bar):
            bar.close()
        if hasattr(model, "_tree"):
            model._tree.invalidate()  # C++ changed train/eval flags; resync on the next forward
    result = dict(epochs=[_epoch_dict(r, segmentation) for r in fitted.epochs], interrupted=fitted.interrupted)
    if hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(len(result["epochs"]))
    log.history["feature_cache"] = any(e.get("feature_cache") for e in log.history["epochs"]) or any(
        e["feature_cache"] for e in result["epochs"])
    logged = log.history["epochs"]
    last = result["epochs"][-1] if result["epochs"] else None
    partial = last if last is not None and not (logged and logged[-1]["epoch"] == last["epoch"]) else None
    done = logged[-1]["epoch"] if logged else (resume_epoch or 0)  # before finish() appends the partial one
    history = log.finish(partial if result["interrupted"] else None, interrupted=result["interrupted"])
    if group is not None:
        torch.distributed.barrier()  # fit returns on every rank once rank 0's files are complete
    if keyboard_interrupt:
        where = (f"; last.pt: {os.path.join(os.fspath(checkpoint_dir), 'last.pt')} (resume= it to continue)"
                 if checkpoint_dir else " (no checkpoint_dir: nothing saved)")
        message = f"training interrupted after {done} of {epochs} epochs{where}"
        if isinstance(bar, _Bar) and bar.enabled:
            bar.write(message)
        raise KeyboardInterrupt(message)
    return history


def evaluate(model, loader, *, task: str = "classification", device: Optional[str] = None,
             ignore_index: int = 255, amp: Optional[str] = None, channels_last: Optional[bool] = None,
             progress: bool = False) -> dict:
    """One evaluation pass in C++: ``{"loss", "acc1", "acc5", "confusion"}`` for classification,
    ``{"loss", "pixel_acc", "miou", "iou", "confusion"}`` for segmentation (torchvision references'
    confusion-matrix metrics; ``miou`` averages the classes present in the target or the prediction,
    ``iou`` is NaN for the others). ``skipped`` counts the samples on_error="skip" dropped. ``amp`` and
    ``channels_last`` as in ``fit``."""
    group = process_group(device)
    device = _rank_device(device, group)
    model.to(device)
    defaults = _C.engine.FIT_OPTIONS
    bar = _Bar(progress and _is_main_process(group))
    try:
        result = _C.engine.evaluate(
            _cpp_model(model), _source(loader, "loader", need_len=False), lambda p: bar(_progress_dict(p)),
            task=task, device=str(device),
            ignore_index=int(ignore_index), amp=amp or defaults["amp"],
            channels_last=defaults["channels_last"] if channels_last is None else bool(channels_last),
            process_group=group)
    finally:
        bar.close()
        if hasattr(model, "_tree"):
            model._tree.invalidate()
    return _eval_dict(result, task == "segmentation")
