from __future__ import annotations

import json
import math
import os
import time
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from torchtl.engine import _is_main_process, _process_group, _rank_device


def lr_factor(it: int, *, kind: str, epochs: int, iters_per_epoch: int, step_size: int = 7, gamma: float = 0.1,
              power: float = 0.9, warmup_epochs: int = 0, warmup_factor: float = 0.01) -> float:
    """The learning-rate multiplier at iteration ``it`` (torchtl::engine::LRSchedule)."""
    warmup = warmup_epochs * iters_per_epoch
    if it < warmup:
        return warmup_factor + (1.0 - warmup_factor) * it / warmup
    t = it - warmup
    total = (epochs - warmup_epochs) * iters_per_epoch
    if kind == "step":
        return gamma ** (t // (step_size * iters_per_epoch))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    if kind == "poly":
        return max(0.0, 1.0 - t / total) ** power
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown lr_schedule '{kind}'; choose constant, step, cosine or poly")


def _is_segmentation(model) -> bool:
    return hasattr(model, "backbone") and hasattr(model, "classifier")


def _heads(model, segmentation: bool):
    """The head_lr group in every mode; the only trained part in feature_extractor mode."""
    if segmentation:
        return [m for m in (model.classifier, getattr(model, "aux_classifier", None)) if m is not None]
    return [model.fc] if hasattr(model, "fc") else []


def _resnet_features(m, x):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return torch.flatten(m.avgpool(x), 1)


def _segmentation_heads(model, features, size):
    out = OrderedDict()
    out["out"] = F.interpolate(model.classifier(features["out"]), size=size, mode="bilinear", align_corners=False)
    aux = getattr(model, "aux_classifier", None)
    if aux is not None:
        out["aux"] = F.interpolate(aux(features["aux"]), size=size, mode="bilinear", align_corners=False)
    return out


def _segmentation_loss(out, target, aux_weight, ignore_index):
    loss = F.cross_entropy(out["out"], target, ignore_index=ignore_index)
    if "aux" in out:
        loss = loss + aux_weight * F.cross_entropy(out["aux"], target, ignore_index=ignore_index)
    return loss


def _classification_loss(logits, target, label_smoothing):
    if int(target.max()) >= logits.shape[1]:
        raise ValueError(f"label {int(target.max())} in the data, but the model has {logits.shape[1]} classes "
                         "(num_classes mismatch between model and data)")
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def _confusion(target, prediction, n):
    a, b = target.flatten().long(), prediction.flatten().long()
    k = (a >= 0) & (a < n)
    return torch.bincount(n * a[k] + b[k], minlength=n * n).reshape(n, n).cpu()


def _batches(loader, epoch):
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    return loader


def _make_optimizer(name, groups, lr, momentum, nesterov, weight_decay):
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; choose sgd, adam or adamw")


def evaluate(model, loader, *, task: str = "classification", device: Optional[str] = None, ignore_index: int = 255,
             progress: bool = False, _epoch: int = 0) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    segmentation = task == "segmentation"
    loss_sum, images, correct1, correct5, confusion = 0.0, 0, 0, 0, None
    start = time.perf_counter()
    with torch.no_grad():
        for x, y in _batches(loader, 0):
            x, y = x.to(device), y.to(device)
            if segmentation:
                out = model(x)
                loss = _segmentation_loss(out, y, 0.5, ignore_index)
                pred, n = out["out"].argmax(1), out["out"].shape[1]
            else:
                logits = model(x)
                loss = _classification_loss(logits, y, 0.0)
                top = logits.topk(min(5, logits.shape[1]), 1).indices
                hit = top.eq(y.view(-1, 1))
                correct1 += int(hit[:, :1].sum())
                correct5 += int(hit.sum())
                pred, n = logits.argmax(1), logits.shape[1]
            c = _confusion(y, pred, n)
            confusion = c if confusion is None else confusion + c
            loss_sum += float(loss) * x.shape[0]
            images += x.shape[0]
    if images == 0:
        raise ValueError("the evaluation loader yielded no batch")
    result = {"loss": loss_sum / images}
    if segmentation:
        h = confusion.double()
        iu = h.diag() / (h.sum(1) + h.sum(0) - h.diag())
        result.update(pixel_acc=float(h.diag().sum() / h.sum()), miou=float(iu.mean()), iou=iu.tolist())
    else:
        result.update(acc1=correct1 / images, acc5=correct5 / images)
    result.update(confusion=confusion, images=images, seconds=time.perf_counter() - start)
    return result


def fit(model, train_loader, val_loader=None, *, task: str = "classification", mode: str = "finetune",
        optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
        nesterov: bool = False, head_lr: Optional[float] = None, epochs: int = 1, lr_schedule: str = "constant",
        step_size: int = 7, gamma: float = 0.1, warmup_epochs: int = 0, clip_grad_norm: Optional[float] = None,
        label_smoothing: float = 0.0, aux_weight: float = 0.5, ignore_index: int = 255,
        device: Optional[str] = None, amp: Optional[str] = None, channels_last: Optional[bool] = None,
        cache_features: bool = False, checkpoint_dir=None, resume=None, seed: int = 0, progress: bool = True) -> dict:
    """torchtl.engine.fit in plain PyTorch (no feature cache, no resume: the twin is the baseline).

    Under torch.distributed (the same group torchtl.engine.fit joins) the model trains inside
    DistributedDataParallel on this rank's shard of ``train_loader``; every rank evaluates the whole
    validation set, and the history is the whole run's.
    """
    if mode not in ("scratch", "finetune", "feature_extractor"):
        raise ValueError(f"unknown mode '{mode}'; choose scratch, finetune or feature_extractor")
    process_group = _process_group(device)
    device = _rank_device(device, process_group)
    segmentation = task == "segmentation"
    torch.manual_seed(seed)
    extract = mode == "feature_extractor"
    heads = _heads(model, segmentation)
    head_ids = {id(p) for h in heads for p in h.parameters()}
    if extract:
        for p in model.parameters():
            if id(p) not in head_ids:
                p.requires_grad_(False)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    body = [p for p in params if id(p) not in head_ids]
    head = [p for p in params if id(p) in head_ids]
    if not params:
        raise ValueError("no parameter requires grad: nothing to train")
    groups, base_lrs = [], []
    for group, group_lr in ((body, lr), (head, lr if head_lr is None else head_lr)):
        if group:
            groups.append({"params": group, "lr": group_lr})
            base_lrs.append(group_lr)
    opt = _make_optimizer(optimizer, groups, lr, momentum, nesterov, weight_decay)
    # The frozen part builds no graph (neither its input nor its weights need grad), so running the
    # whole model through DDP costs what the no_grad feature path costs.
    ddp = DistributedDataParallel(model) if process_group is not None else None
    if ddp is not None and getattr(train_loader, "num_replicas", 1) == 1:
        train_loader = train_loader.shard(process_group.size(), process_group.rank())
    iters = len(train_loader)
    if iters == 0:
        raise ValueError("the training loader yields no batch")
    lr_factor(0, kind=lr_schedule, epochs=epochs, iters_per_epoch=iters)  # validates the name
    main = _is_main_process(process_group)
    if checkpoint_dir and main:
        os.makedirs(checkpoint_dir, exist_ok=True)
    history = {"engine": "python", "task": task, "mode": mode, "device": str(device), "feature_cache": False,
               "best_metric": -1.0, "best_epoch": -1, "interrupted": False, "epochs": []}
    it = 0
    for epoch in range(epochs):
        model.train()
        if extract:
            model.eval()
            for h in heads:
                h.train()
        record = {"epoch": epoch, "step_losses": [], "feature_cache": False}
        loss_sum, images, correct = 0.0, 0, 0
        start = time.perf_counter()
        for x, y in _batches(train_loader, epoch):
            x, y = x.to(device), y.to(device)
            factor = lr_factor(it, kind=lr_schedule, epochs=epochs, iters_per_epoch=iters, step_size=step_size,
                               gamma=gamma, warmup_epochs=warmup_epochs)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * factor
            record["lr"] = base_lrs[0] * factor
            opt.zero_grad()
            if segmentation:
                if ddp is not None:
                    out = ddp(x)
                elif extract:
                    with torch.no_grad():
                        features = model.backbone(x)
                    out = _segmentation_heads(model, features, x.shape[-2:])
                else:
                    out = model(x)
                loss = _segmentation_loss(out, y, aux_weight, ignore_index)
                logits = None
            else:
                if ddp is not None:
                    logits = ddp(x)
                elif extract:
                    with torch.no_grad():
                        features = _resnet_features(model, x)
                    logits = model.fc(features)
                else:
                    logits = model(x)
                loss = _classification_loss(logits, y, label_smoothing)
            loss.backward()
            if clip_grad_norm:
                nn.utils.clip_grad_norm_(params, clip_grad_norm)
            opt.step()
            it += 1
            value = loss.detach().item()
            record["step_losses"].append(value)
            loss_sum += value * x.shape[0]
            images += x.shape[0]
            if logits is not None:
                correct += int((logits.argmax(1) == y).sum())
        if process_group is not None:
            steps = torch.tensor(record["step_losses"], dtype=torch.float64)
            totals = torch.tensor([loss_sum, images, correct], dtype=torch.float64)
            torch.distributed.all_reduce(steps)
            torch.distributed.all_reduce(totals)
            record["step_losses"] = (steps / process_group.size()).tolist()
            loss_sum, images, correct = totals[0].item(), int(totals[1]), int(totals[2])
        seconds = time.perf_counter() - start
        record.update(train_loss=loss_sum / max(images, 1), images=images, seconds=seconds,
                      images_per_second=images / seconds if seconds > 0 else 0.0)
        if not segmentation:
            record["train_acc"] = correct / max(images, 1)
        if val_loader is not None:
            val = evaluate(model, val_loader, task=task, device=device, ignore_index=ignore_index)
            record["val"] = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in val.items()}
            metric = val["miou"] if segmentation else val["acc1"]
            if history["best_epoch"] < 0 or metric > history["best_metric"]:
                history["best_metric"], history["best_epoch"] = metric, epoch
                if checkpoint_dir and main:
                    torch.save(dict(model.state_dict()), os.path.join(checkpoint_dir, "best.pt"))
        if checkpoint_dir and main:
            torch.save({"model": dict(model.state_dict()), "epoch": epoch + 1},
                       os.path.join(checkpoint_dir, "last.pt"))
        history["epochs"].append(record)
    if checkpoint_dir and main:
        with open(os.path.join(os.fspath(checkpoint_dir), "history.json"), "w") as f:
            json.dump(history, f, indent=1)
    if process_group is not None:
        torch.distributed.barrier()
    return history
