from __future__ import annotations

import math
import os
import time
import warnings
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel


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


def _as_segmentation_dict(out):
    # segmentation_models_pytorch's models return the masks as one tensor, torchvision's a dict.
    return OrderedDict(out=out) if isinstance(out, torch.Tensor) else out


def _heads(model, segmentation: bool):
    """The head_lr group in every mode; the only trained part in feature_extractor mode."""
    if segmentation and hasattr(model, "segmentation_head"):
        return [model.segmentation_head]
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


def _segmentation_loss(out, target, aux_weight, ignore_index, weight=None):
    w = None if weight is None else weight.to(target.device)
    loss = F.cross_entropy(out["out"], target, weight=w, ignore_index=ignore_index)
    if "aux" in out:
        loss = loss + aux_weight * F.cross_entropy(out["aux"], target, weight=w, ignore_index=ignore_index)
    return loss


def _classification_loss(logits, target, label_smoothing, weight=None):
    if int(target.max()) >= logits.shape[1]:
        raise ValueError(f"label {int(target.max())} in the data, but the model has {logits.shape[1]} classes "
                         "(num_classes mismatch between model and data)")
    w = None if weight is None else weight.to(logits.device)
    return F.cross_entropy(logits, target, weight=w, label_smoothing=label_smoothing)


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


def _amp_dtype(amp, device):
    """torchtl::engine::amp_dtype: the autocast dtype for ``amp`` on ``device``, None for off."""
    if amp in (None, "off"):
        return None
    if amp not in ("fp16", "bf16"):
        raise ValueError(f"amp must be off, fp16 or bf16, got '{amp}'")
    if torch.device(device).type == "cpu":
        if amp == "fp16":
            raise ValueError("amp='fp16' needs a CUDA device; on the CPU use amp='bf16'")
        from torchtl.fast_path import cpu_supports_bf16

        if not cpu_supports_bf16():
            raise ValueError("amp='bf16' on the CPU needs AVX-512 BF16 or AMX, which this CPU lacks (bf16 would run "
                             "slower than fp32 here); use amp='off'")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _layout(x, channels_last):
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def evaluate(model, loader, *, task: str = "classification", device: Optional[str] = None, ignore_index: int = 255,
             amp: Optional[str] = None, channels_last: Optional[bool] = None, progress: bool = False,
             class_weights=None) -> dict:
    """torchtl.engine.evaluate in plain PyTorch; ``amp`` and ``channels_last`` as in ``fit``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _amp_dtype(amp, device)
    channels_last = channels_last is None or bool(channels_last)
    model.to(device).eval()
    segmentation = task == "segmentation"
    loss_sum, images, correct1, correct5, confusion = 0.0, 0, 0, 0, None
    start = time.perf_counter()
    with torch.no_grad():
        for x, y in _batches(loader, 0):
            x, y = _layout(x.to(device), channels_last), y.to(device)
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                if segmentation:
                    out = _as_segmentation_dict(model(x))
                    loss = _segmentation_loss(out, y, 0.5, ignore_index, class_weights)
                else:
                    logits = model(x)
                    loss = _classification_loss(logits, y, 0.0, class_weights)
            if segmentation:
                pred, n = out["out"].argmax(1), out["out"].shape[1]
            else:
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
        union = h.sum(1) + h.sum(0) - h.diag()
        iu = h.diag() / union
        # Over the classes present in the target or the prediction (torchtl::engine::ConfusionMatrix).
        miou = float(iu[union > 0].mean()) if bool((union > 0).any()) else math.nan
        result.update(pixel_acc=float(h.diag().sum() / h.sum()), miou=miou, iou=iu.tolist())
    else:
        result.update(acc1=correct1 / images, acc5=correct5 / images)
    result.update(confusion=confusion, images=images, seconds=time.perf_counter() - start)
    return result


def _finite(model) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in list(model.parameters()) + list(model.buffers())
               if t.is_floating_point())


def _any_rank(flag: bool, process_group, device) -> bool:
    """True on every rank when ``flag`` is on any: ranks skip a step together, or DDP's all-reduce
    would leave the others waiting."""
    if process_group is None:
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def fit(model, train_loader, val_loader=None, *, task: str = "classification", mode: str = "finetune",
        optimizer="sgd", lr: Optional[float] = None, momentum: Optional[float] = None,
        weight_decay: Optional[float] = None, nesterov: Optional[bool] = None, head_lr: Optional[float] = None,
        epochs: int = 1, lr_schedule: str = "constant", step_size: int = 7, gamma: float = 0.1,
        warmup_epochs: int = 0, clip_grad_norm: Optional[float] = None, label_smoothing: float = 0.0,
        class_weights=None, aux_weight: float = 0.5, ignore_index: int = 255, device: Optional[str] = None,
        amp: Optional[str] = None, channels_last: Optional[bool] = None, cache_features: bool = False,
        sync_bn: bool = False, checkpoint_dir=None, resume=None, tensorboard=None, max_nonfinite_losses: int = 10,
        seed: int = 0, progress=True) -> dict:
    """torchtl.engine.fit in plain PyTorch (no feature cache, no resume: the twin is the baseline).

    The same epoch lines, logs (history.json, metrics.csv, TensorBoard), non-finite loss handling
    and best.pt rule as the C++ loop; a torch.optim optimizer instance is stepped as it is.
    amp and channels_last as in torchtl.engine.fit: autocast around the forward passes, and the
    convolution weights and batches in channels_last for the run (weights restored afterwards).
    ``channels_last=False, amp=None`` is torchvision's default execution.

    Under torch.distributed (the same group torchtl.engine.fit joins) the model trains inside
    DistributedDataParallel on this rank's shard of a ``torchtl.data.DataLoader`` (another iterable is
    the caller's to shard); every rank evaluates the whole validation set, the history is the whole
    run's, and rank 0 alone writes.

    sync_bn: the model's batch norm layers become ``torch.nn.SyncBatchNorm`` through
    ``convert_sync_batchnorm`` before DDP wraps it, in place, as torchvision's references do. torch's
    SyncBatchNorm synchronizes on GPUs only: under a process group on the CPU it raises ValueError
    (torchtl.engine.fit synchronizes on gloo too).
    """
    from torchtl import _C, _runlog
    from torchtl.engine import _Bar, _class_weights, _is_main_process, _rank_device, check_run_arguments, process_group

    if resume:
        raise ValueError("torchtl.reference.fit does not resume; torchtl.engine.fit does")
    if mode not in _C.engine.FIT_CHOICES["mode"]:
        raise ValueError(f"unknown mode '{mode}'; choose {', '.join(_C.engine.FIT_CHOICES['mode'])}")
    hyper = check_run_arguments(optimizer, lr, momentum, weight_decay, nesterov, head_lr, seed, max_nonfinite_losses)
    _runlog.check_fresh_dir(checkpoint_dir)
    dist_group = process_group(device)
    device = _rank_device(device, dist_group)
    main = _is_main_process(dist_group)
    dtype = _amp_dtype(amp, device)
    channels_last = channels_last is None or bool(channels_last)
    segmentation = task == "segmentation"
    weight = _class_weights(class_weights)
    torch.manual_seed(seed)
    extract = mode == "feature_extractor"
    heads = _heads(model, segmentation)
    head_ids = {id(p) for h in heads for p in h.parameters()}
    if extract:
        for p in model.parameters():
            if id(p) not in head_ids:
                p.requires_grad_(False)
    if sync_bn:
        trains = heads if extract else [model]
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for t in trains for m in t.modules()):
            raise ValueError(f"sync_bn=True, but no BatchNorm2d of the model trains in {mode} mode: its "
                             "norm layers are FrozenBatchNorm2d, or frozen with the backbone in feature_extractor mode")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    body = [p for p in params if id(p) not in head_ids]
    head = [p for p in params if id(p) in head_ids]
    if not params:
        raise ValueError("no parameter requires grad: nothing to train")
    if isinstance(optimizer, str):
        groups, base_lrs = [], []
        for group, group_lr in ((body, hyper["lr"]), (head, hyper["lr"] if head_lr is None else head_lr)):
            if group:
                groups.append({"params": group, "lr": group_lr})
                base_lrs.append(group_lr)
        opt = _make_optimizer(optimizer, groups, hyper["lr"], hyper["momentum"], hyper["nesterov"],
                              hyper["weight_decay"])
    else:
        from torchtl.engine import optimizer_groups

        optimizer_groups(optimizer)  # the same checks as the C++ engine's
        opt = optimizer
        base_lrs = [float(g["lr"]) for g in opt.param_groups]
    if dist_group is not None and hasattr(train_loader, "shard") and train_loader.num_replicas == 1:
        train_loader = train_loader.shard(dist_group.size(), dist_group.rank())
    iters = len(train_loader)
    if iters == 0:
        raise ValueError("the training loader yields no batch")
    lr_factor(0, kind=lr_schedule, epochs=epochs, iters_per_epoch=iters)  # validates the name
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)
    if checkpoint_dir and main:
        os.makedirs(checkpoint_dir, exist_ok=True)
    bar = _Bar(progress is True and main)
    log = _runlog.RunLog({"engine": "python", "task": task, "mode": mode, "device": str(device), "feature_cache": False},
                         epochs=epochs, checkpoint_dir=checkpoint_dir, tensorboard=tensorboard,
                         writes=main, echo=bar.write if progress is True and main else None)
    best_metric, best_epoch, nonfinite, it = None, None, 0, 0
    record = None
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # Built after the layout change, so its gradient buckets match the weights' strides. The frozen part
    # builds no graph (neither its input nor its weights need grad), so running the whole model through
    # DDP costs what the no_grad feature path costs.
    ddp = DistributedDataParallel(model) if dist_group is not None else None
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            if extract:
                model.eval()
                for h in heads:
                    h.train()
            record = {"epoch": epoch, "step_losses": [], "nonfinite_losses": 0, "feature_cache": False}
            loss_sum, images, correct = 0.0, 0, 0
            start = time.perf_counter()
            for x, y in _batches(train_loader, epoch - 1):
                x, y = _layout(x.to(device), channels_last), y.to(device)
                factor = lr_factor(it, kind=lr_schedule, epochs=epochs, iters_per_epoch=iters, step_size=step_size,
                                   gamma=gamma, warmup_epochs=warmup_epochs)
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = base * factor
                record["lr"] = base_lrs[0] * factor
                opt.zero_grad()
                with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                    if segmentation:
                        if ddp is not None:
                            out = _as_segmentation_dict(ddp(x))
                        elif extract:
                            with torch.no_grad():
                                features = model.backbone(x)
                            out = _segmentation_heads(model, features, x.shape[-2:])
                        else:
                            out = _as_segmentation_dict(model(x))
                        loss = _segmentation_loss(out, y, aux_weight, ignore_index, weight)
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
                        loss = _classification_loss(logits, y, label_smoothing, weight)
                value = loss.detach().item()
                it += 1
                record["step_losses"].append(value)
                if _any_rank(not math.isfinite(value), dist_group, device):  # skipped, as in torchtl::engine::fit
                    nonfinite += 1
                    record["nonfinite_losses"] += 1
                    if nonfinite == 1:
                        warnings.warn(f"the loss is {value} at epoch {epoch}, step {len(record['step_losses'])}: its "
                                      f"optimizer step is skipped; the run stops at max_nonfinite_losses="
                                      f"{max_nonfinite_losses} such losses", RuntimeWarning, stacklevel=2)
                    if nonfinite >= max_nonfinite_losses:
                        raise RuntimeError(f"training stopped: {nonfinite} non-finite losses (max_nonfinite_losses="
                                           f"{max_nonfinite_losses})")
                    continue
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                if clip_grad_norm:
                    nn.utils.clip_grad_norm_(params, clip_grad_norm)
                scaler.step(opt)
                scaler.update()
                loss_sum += value * x.shape[0]
                images += x.shape[0]
                if logits is not None:
                    correct += int((logits.argmax(1) == y).sum())
            if dist_group is not None:
                steps = torch.tensor(record["step_losses"], dtype=torch.float64, device=device)
                totals = torch.tensor([loss_sum, images, correct], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(steps)
                torch.distributed.all_reduce(totals)
                record["step_losses"] = (steps / dist_group.size()).tolist()
                loss_sum, images, correct = totals[0].item(), int(totals[1]), int(totals[2])
            seconds = time.perf_counter() - start
            record.update(train_loss=loss_sum / max(images, 1), images=images, seconds=seconds,
                          images_per_second=images / seconds if seconds > 0 else 0.0)
            if not segmentation:
                record["train_acc"] = correct / max(images, 1)
            if val_loader is not None:
                val = evaluate(model, val_loader, task=task, device=device, ignore_index=ignore_index,
                               amp=amp, channels_last=channels_last, class_weights=weight)
                record["val"] = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in val.items()}
                metric = val["miou"] if segmentation else val["acc1"]
                if math.isfinite(metric) and (best_metric is None or metric > best_metric) and _finite(model):
                    best_metric, best_epoch = metric, epoch
                    if checkpoint_dir and main:
                        torch.save(dict(model.state_dict()), os.path.join(checkpoint_dir, "best.pt"))
            if checkpoint_dir and main:
                torch.save({"model": dict(model.state_dict()), "epoch": epoch},
                           os.path.join(checkpoint_dir, "last.pt"))
            record.update(best_metric=best_metric, best_epoch=best_epoch)
            log.epoch_end(record)
            record = None
    except KeyboardInterrupt:
        log.finish(record)
        message = (f"training interrupted after {epoch - 1} of {epochs} epochs"
                   + (f"; last.pt: {os.path.join(os.fspath(checkpoint_dir), 'last.pt')}" if checkpoint_dir else ""))
        if progress is True and main:
            bar.write(message)
        raise KeyboardInterrupt(message) from None
    except BaseException:
        log.finish()
        raise
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    history = log.finish()
    if dist_group is not None:
        torch.distributed.barrier()  # fit returns on every rank once rank 0's files are complete
    return history
