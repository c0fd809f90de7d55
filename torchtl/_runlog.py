"""What a training run shows and leaves behind, for ``torchtl.engine.fit`` and its Python twin.

Per complete epoch: a lasting line on the screen, a record appended to ``history.json``, a row
appended to ``metrics.csv`` and TensorBoard scalars (when tensorboard is installed). Epochs count
from 1 everywhere. A resumed run continues all of them from the checkpoint's epoch; a fresh run
refuses a checkpoint_dir that already holds an earlier run's files rather than overwrite them.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Optional

RUN_FILES = ("history.json", "metrics.csv", "last.pt", "best.pt")
_CSV_COLUMNS = {
    "classification": ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc1", "val_acc5",
                       "images_per_second", "seconds", "nonfinite_losses", "skipped"],
    "segmentation": ["epoch", "lr", "train_loss", "val_loss", "val_pixel_acc", "val_miou",
                     "images_per_second", "seconds", "nonfinite_losses", "skipped"],
}


def check_fresh_dir(checkpoint_dir) -> None:
    """Refuses to start a new run over an earlier run's files (``resume=`` continues one)."""
    if not checkpoint_dir:
        return
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(os.fspath(checkpoint_dir), name))]
    if not found:
        return  # a killed run's half-written .tmp files alone block nothing: the run removes them
    last = os.path.join(os.fspath(checkpoint_dir), "last.pt")
    if "last.pt" in found:
        raise FileExistsError(
            f"checkpoint_dir '{os.fspath(checkpoint_dir)}' already holds an earlier run ({', '.join(found)}); "
            f"pass resume='{last}' to continue it, or choose another checkpoint_dir: a new run does not overwrite "
            "an earlier one")
    # No last.pt: nothing to resume. fit writes last.pt before best.pt and the logs, so only a run of
    # an earlier torchtl killed in its first epoch's writes, or a removed last.pt, leaves this.
    weights = " (best.pt holds that run's best weights: load it with load_state_dict)" if "best.pt" in found else ""
    raise FileExistsError(
        f"checkpoint_dir '{os.fspath(checkpoint_dir)}' holds files of an earlier run ({', '.join(found)}) but no "
        f"last.pt, so that run cannot be resumed. To start a new one, move {', '.join(found)} out of it{weights} "
        "or choose another checkpoint_dir: a new run does not overwrite an earlier one")


def _write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)  # a kill mid-write leaves the previous history, never half of one


def _summary_writer(tensorboard, checkpoint_dir, purge_step: Optional[int]):
    """None, or a SummaryWriter: ``tensorboard`` is a log dir, True, False, or None (on when installed)."""
    if tensorboard is False:
        return None
    if tensorboard is None or tensorboard is True:
        if not checkpoint_dir:
            if tensorboard:
                raise ValueError("tensorboard=True writes into checkpoint_dir/tensorboard: give a checkpoint_dir, "
                                 "or pass the log dir as tensorboard=")
            return None
        log_dir = os.path.join(os.fspath(checkpoint_dir), "tensorboard")
    else:
        log_dir = os.fspath(tensorboard)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if tensorboard is None:
            return None
        raise ImportError(f"tensorboard={tensorboard!r} needs the tensorboard package (pip install tensorboard)") from e
    return SummaryWriter(log_dir=log_dir, purge_step=purge_step)


def epoch_line(record: dict, epochs: int, task: str) -> str:
    """The lasting line of one epoch: train loss/accuracy, validation metrics, lr, images/s, time."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"train loss {record['train_loss']:.4f}"]
    if record.get("train_acc") is not None:
        parts.append(f"acc {record['train_acc']:.3f}")
    val = record.get("val")
    if val:
        if task == "segmentation":
            parts.append(f"| val loss {val['loss']:.4f} pixel acc {val['pixel_acc']:.3f} mIoU {val['miou']:.3f}")
        else:
            parts.append(f"| val loss {val['loss']:.4f} acc1 {val['acc1']:.3f} acc5 {val['acc5']:.3f}")
    parts.append(f"| lr {record['lr']:.3g} | {record['images_per_second']:.1f} img/s | {record['seconds']:.1f}s")
    if record.get("nonfinite_losses"):
        parts.append(f"| {record['nonfinite_losses']} non-finite losses")
    if record.get("skipped"):
        parts.append(f"| {record['skipped']} skipped")
    return "  ".join(parts)


class RunLog:
    """Receives each complete epoch's record; writes and prints it at once."""

    def __init__(self, history: dict, *, epochs: int, checkpoint_dir=None, resume_epoch: Optional[int] = None,
                 tensorboard=None, writes: bool = True, echo=None):
        self.task = history["task"]
        self.epochs = epochs
        self.echo = echo  # a callable printing one line, or None
        self.dir = os.fspath(checkpoint_dir) if checkpoint_dir else None
        # False on the ranks other than 0 of a data-parallel run: they keep the same history, rank 0 writes it.
        self.writes = writes
        self.history = dict(history, best_metric=None, best_epoch=None, interrupted=False, epochs=[])
        if resume_epoch is not None and self.dir:
            self._continue(resume_epoch)
        self.writer = None if not writes else _summary_writer(tensorboard, self.dir, None if resume_epoch is None else resume_epoch + 1)
        self.csv_path = os.path.join(self.dir, "metrics.csv") if self.dir else None

    def _continue(self, resume_epoch: int) -> None:
        """Keeps the earlier epochs up to the checkpoint's; an interrupted one is run again."""
        path = os.path.join(self.dir, "history.json")
        if os.path.exists(path):
            with open(path) as f:
                try:
                    earlier = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"resume: cannot read the earlier history '{path}': {e}") from e
            kept = [e for e in earlier.get("epochs", []) if e["epoch"] <= resume_epoch and not e.get("interrupted")]
            # Epochs past the checkpoint (a resume from an older last.pt) are run again; keep the old ones too.
            superseded = [e for e in earlier.get("epochs", []) if e["epoch"] > resume_epoch and not e.get("interrupted")]
            self.history["epochs"] = kept
            self.history["superseded_epochs"] = earlier.get("superseded_epochs", []) + superseded
            for e in kept:
                self._track_best(e)
        csv_path = os.path.join(self.dir, "metrics.csv")
        if os.path.exists(csv_path):
            with open(csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
            kept_rows = [r for r in rows if int(r["epoch"]) <= resume_epoch]
            if len(kept_rows) != len(rows) and self.writes:
                self._write_csv_rows(csv_path, kept_rows)

    def _write_csv_rows(self, path, rows) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_CSV_COLUMNS[self.task])
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)

    def _track_best(self, record: dict) -> None:
        best = record.get("best_epoch")
        if best is not None and best > 0:
            self.history["best_epoch"], self.history["best_metric"] = best, record.get("best_metric")

    def _row(self, record: dict) -> dict:
        val = record.get("val") or {}
        row = {"epoch": record["epoch"], "lr": record["lr"], "train_loss": record["train_loss"],
               "images_per_second": record["images_per_second"], "seconds": record["seconds"],
               "nonfinite_losses": record.get("nonfinite_losses", 0), "skipped": record.get("skipped", 0)}
        if self.task == "segmentation":
            row.update(val_loss=val.get("loss", ""), val_pixel_acc=val.get("pixel_acc", ""), val_miou=val.get("miou", ""))
        else:
            row.update(train_acc=record.get("train_acc", ""), val_loss=val.get("loss", ""), val_acc1=val.get("acc1", ""),
                       val_acc5=val.get("acc5", ""))
        return row

    def epoch_end(self, record: dict) -> None:
        record = _plain(record)
        self.history["epochs"].append(record)
        self._track_best(record)
        if self.dir and self.writes:
            _write_json(os.path.join(self.dir, "history.json"), self.history)
            new = not os.path.exists(self.csv_path)
            with open(self.csv_path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=_CSV_COLUMNS[self.task])
                if new:
                    w.writeheader()
                w.writerow(self._row(record))
        if self.writer is not None:
            step = record["epoch"]
            for key, value in self._row(record).items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    group = "val" if key.startswith("val_") else "train" if key.startswith("train_") else "run"
                    self.writer.add_scalar(f"{group}/{key.removeprefix('val_').removeprefix('train_')}", value, step)
            self.writer.flush()
        if self.echo is not None:
            self.echo(epoch_line(record, self.epochs, self.task))

    def finish(self, interrupted_record: Optional[dict] = None, interrupted: bool = False) -> dict:
        """Records an interrupted epoch (in history.json only: it is run again on resume)."""
        self.history["interrupted"] = interrupted or interrupted_record is not None
        if interrupted_record is not None:
            self.history["epochs"].append(dict(_plain(interrupted_record), interrupted=True))
        # A run that failed before it made checkpoint_dir has nothing to record there.
        if self.dir and self.writes and os.path.isdir(self.dir):
            _write_json(os.path.join(self.dir, "history.json"), self.history)
        if self.writer is not None:
            self.writer.close()
        return self.history


def _plain(value):
    """Tensors as lists, so a record is JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
