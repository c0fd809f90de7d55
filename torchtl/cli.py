"""The ``torchtl`` command: map files, weights, training, evaluation, prediction and C++-vs-Python comparisons.

Every subcommand has ``--help``. Bad arguments or files end with one line on stderr and exit status 2;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

EXIT_USAGE = 2
CONFIG = "config.json"


def _device_default():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _existing_file(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    return path


def _existing(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    return path


# ---------------------------------------------------------------------------- subcommands

def cmd_make_map(args):
    from torchtl import data

    _existing(args.root)
    n = data.write_map_file(args.root, args.out, layout=args.layout, split=args.split)
    extra = ""
    classes = data.classes_path_for(args.out)
    if os.path.isfile(classes) and args.layout != "voc":
        extra = f" and {classes} ({len(data.read_classes(classes))} classes)"
    print(f"wrote {args.out} ({n} samples){extra}")


def cmd_export_weights(args):
    import torch

    import torchtl

    builder = _builder(args.arch)
    if args.weights:
        _existing_file(args.weights)
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = builder(weights=args.weights, **kwargs)
    if not args.weights:
        print(f"note: no --weights given; {args.arch} is exported with random weights "
              "(torchvision's pretrained weights cannot be downloaded here)", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torchtl.export_traced(model, args.out, torch.randn(1, 3, args.size, args.size))
    print(f"wrote {args.out} (traced {args.arch}, {sum(p.numel() for p in model.parameters())} parameters)")


def _builder(arch):
    import torchtl

    for namespace in (torchtl.models, torchtl.segmentation):
        b = getattr(namespace, arch, None)
        if callable(b) and not arch.startswith("_"):
            return b
    raise ValueError(f"unknown arch '{arch}'; e.g. resnet18, resnet50, fcn_resnet50, deeplabv3_resnet50")


def _is_segmentation_arch(arch):
    return arch.startswith(("fcn_", "deeplabv3_"))


def cmd_train(args):
    import torch

    import torchtl
    from torchtl import compare, data

    task = args.task
    if _is_segmentation_arch(args.arch) != (task == "segmentation"):
        raise ValueError(f"--arch {args.arch} does not fit the task '{task}'")
    for path in (args.weights, args.weights_backbone):
        if path:
            _existing_file(path)
    out = args.out or os.path.join("runs", f"{task}_{args.arch}")
    # Under torchrun every rank joins first; rank 0 alone writes map files, config and output lines.
    group = torchtl.engine._process_group(args.device)
    main = group is None or group.rank() == 0
    maps = [None, None]
    if main:
        maps = [compare.resolve_map(args.train, out, "train"), compare.resolve_map(args.val, out, "val") if args.val else None]
    if group is not None:
        torch.distributed.broadcast_object_list(maps, src=0)
    train_map, val_map = maps
    torch.manual_seed(args.seed)
    size = args.size or (224 if task == "classification" else 480)
    classes = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task == "classification":
            num_classes = args.num_classes or compare._num_classes(train_map)
            classes_file = data.classes_path_for(train_map)
            classes = data.read_classes(classes_file) if os.path.isfile(classes_file) else None
            model = _builder(args.arch)(num_classes=num_classes, weights=args.weights)
            train, val = compare.classification_loaders(train_map, val_map or train_map, size=size,
                                                        batch_size=args.batch_size, workers=args.workers,
                                                        seed=args.seed)
        else:
            if not args.num_classes:
                raise ValueError("segmentation needs --num-classes (21 for PASCAL VOC)")
            num_classes = args.num_classes
            model = _builder(args.arch)(num_classes=num_classes, aux_loss=args.aux_loss, weights=args.weights,
                                        weights_backbone=args.weights_backbone)
            train, val = compare.segmentation_loaders(train_map, val_map or train_map, size=size,
                                                      batch_size=args.batch_size, workers=args.workers,
                                                      seed=args.seed)
    mode = args.mode or ("finetune" if (args.weights or args.weights_backbone) else "scratch")
    config = dict(task=task, arch=args.arch, num_classes=num_classes, size=size, classes=classes,
                  aux_loss=bool(args.aux_loss), mode=mode, train=train_map, val=val_map)
    if main:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, CONFIG), "w") as f:
            json.dump(config, f, indent=1)
    history = torchtl.engine.fit(
        model, train, val if val_map else None, task=task, mode=mode, optimizer=args.optimizer,
        lr=args.lr or (0.01 if task == "classification" else 0.02),
        momentum=0.9, weight_decay=args.weight_decay, epochs=args.epochs,
        lr_schedule=args.lr_schedule or ("poly" if task == "segmentation" else "cosine"), device=args.device,
        checkpoint_dir=out, seed=args.seed, progress=not args.quiet)
    if not main:
        return
    for e in history["epochs"]:
        line = f"epoch {e['epoch'] + 1}: train loss {e['train_loss']:.4f}"
        if "train_acc" in e:
            line += f", train acc {e['train_acc']:.3f}"
        if "val" in e:
            v = e["val"]
            line += (f", val loss {v['loss']:.4f}, val acc {v['acc1']:.3f}" if task == "classification"
                     else f", val loss {v['loss']:.4f}, mIoU {v['miou']:.3f}, pixel acc {v['pixel_acc']:.3f}")
        line += f", {e['images_per_second']:.1f} img/s"
        print(line)
    print(f"checkpoints and history in {out}/ (best.pt, last.pt, history.json, {CONFIG})")


def _load_config(checkpoint, args):
    _existing_file(checkpoint)
    config_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), CONFIG)
    config = {}
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
    for key in ("arch", "num_classes", "size"):
        value = getattr(args, key, None)
        if value:
            config[key] = value
    if "arch" not in config:
        raise ValueError(f"no {CONFIG} next to {checkpoint}: give --arch (and --num-classes for segmentation)")
    config.setdefault("task", "segmentation" if _is_segmentation_arch(config["arch"]) else "classification")
    config.setdefault("size", 224 if config["task"] == "classification" else 480)
    return config


def _load_model(checkpoint, config):
    _existing_file(checkpoint)
    kwargs = {}
    if config.get("num_classes"):
        kwargs["num_classes"] = config["num_classes"]
    if config["task"] == "segmentation":
        kwargs["aux_loss"] = config.get("aux_loss", False)
    return _builder(config["arch"])(weights=checkpoint, **kwargs)


def cmd_evaluate(args):
    import torchtl
    from torchtl import compare

    config = _load_config(args.checkpoint, args)
    if args.task and args.task != config["task"]:
        raise ValueError(f"the checkpoint is a {config['task']} model, not {args.task}")
    model = _load_model(args.checkpoint, config)
    val_map = compare.resolve_map(args.val, os.path.dirname(os.path.abspath(args.checkpoint)), "val")
    if config["task"] == "classification":
        _, val = compare.classification_loaders(val_map, val_map, size=config["size"], batch_size=args.batch_size,
                                                workers=args.workers)
    else:
        _, val = compare.segmentation_loaders(val_map, val_map, size=config["size"], workers=args.workers)
    r = torchtl.engine.evaluate(model, val, task=config["task"], device=args.device, progress=not args.quiet)
    if config["task"] == "classification":
        print(f"{val_map}: {len(val.dataset)} images, loss {r['loss']:.4f}, acc@1 {r['acc1']:.4f}, "
              f"acc@5 {r['acc5']:.4f}")
    else:
        print(f"{val_map}: {len(val.dataset)} images, loss {r['loss']:.4f}, mIoU {r['miou']:.4f}, "
              f"pixel acc {r['pixel_acc']:.4f}")


def cmd_predict(args):
    import torch
    from torchvision.io import write_png
    from torchvision.transforms.v2 import functional as TF

    from torchtl import compare, data

    config = _load_config(args.checkpoint, args)
    model = _load_model(args.checkpoint, config).to(args.device).eval()
    size = config["size"]
    for path in args.images:
        image = data.read_image(_existing_file(path))
        if config["task"] == "classification":
            x = data.classification_transform(train=False, size=size,
                                              resize_size=size if size < 128 else size * 256 // 224)(image, seed=0)
            with torch.no_grad():
                probs = model(x[None].to(args.device)).softmax(1)[0].cpu()
            top = probs.topk(min(args.topk, probs.numel()))
            names = config.get("classes") or [str(i) for i in range(probs.numel())]
            print(path + ": " + ", ".join(f"{names[i]} {p:.3f}" for p, i in zip(top.values.tolist(),
                                                                             top.indices.tolist())))
        else:
            resized = TF.resize(image, [size], antialias=True)
            x = TF.normalize(resized.float() / 255, list(data.IMAGENET_MEAN), list(data.IMAGENET_STD))
            mask = compare.predict_masks(model, x[None], args.device)[0]
            os.makedirs(args.out, exist_ok=True)
            out = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + "_mask.png")
            write_png(compare.overlay(resized, mask), out)
            present = torch.bincount(mask.flatten(), minlength=config["num_classes"])
            share = ", ".join(f"class {c} {n / mask.numel():.1%}" for c, n in enumerate(present.tolist()) if n)
            print(f"{path}: wrote {out} ({share})")


def cmd_compare(args):
    from torchtl import compare

    for path in (args.weights, getattr(args, "weights_backbone", None)):
        if path:
            _existing_file(path)
    _existing(args.train)
    _existing(args.val)
    out = args.out or os.path.join("reports", args.task)
    log = (lambda *a: None) if args.quiet else print
    size = args.size or 64
    if args.task == "classification":
        scenarios = args.scenarios.split(",")
        bad = [s for s in scenarios if s not in compare.SCENARIOS]
        if bad:
            raise ValueError(f"unknown scenario '{bad[0]}'; choose from {', '.join(compare.SCENARIOS)}")
        report = compare.compare_classification(
            args.train, args.val, out, weights=args.weights, arch=args.arch or "resnet18", scenarios=scenarios,
            epochs=args.epochs, batch_size=args.batch_size, size=size, lr=args.lr or 0.01, device=args.device,
            seed=args.seed, workers=args.workers, progress=not args.quiet, log=log)
    else:
        if not args.num_classes:
            raise ValueError("segmentation needs --num-classes (21 for PASCAL VOC)")
        report = compare.compare_segmentation(
            args.train, args.val, out, arch=args.arch or "fcn_resnet50", num_classes=args.num_classes,
            weights=args.weights, weights_backbone=args.weights_backbone, epochs=args.epochs,
            batch_size=args.batch_size, size=size, lr=args.lr or 0.02, device=args.device, seed=args.seed,
            workers=args.workers, progress=not args.quiet, log=log)
    print(report["table"])
    print(f"report: {os.path.join(out, 'report.md')}")


# ---------------------------------------------------------------------------- parser

def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    parser = argparse.ArgumentParser(
        prog="torchtl", parents=[common],
        description="torchvision's ResNet/FCN/DeepLabV3 trained in C++ (LibTorch), with Python twins to compare.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, func, help):
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    def run_options(p, epochs, batch_size):
        p.add_argument("--epochs", type=int, default=epochs)
        p.add_argument("--batch-size", type=int, default=batch_size)
        p.add_argument("--lr", type=float, default=None, help="learning rate (default per task)")
        p.add_argument("--size", type=int, default=None,
                       help="crop size (classification, default 224) or base size (segmentation, default 480)")
        p.add_argument("--device", default=_device_default(), help="cpu, cuda, cuda:1 (default: cuda if available)")
        p.add_argument("--workers", type=int, default=2, help="C++ loader threads")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add("make-map", cmd_make_map, "write a map file for an ImageFolder tree or a PASCAL VOC folder")
    p.add_argument("root", help="ImageFolder root (root/<class>/<images>) or VOC root (JPEGImages, SegmentationClass)")
    p.add_argument("out", help="map file to write (ImageFolder: also <out>_classes.txt)")
    p.add_argument("--layout", choices=("auto", "imagefolder", "voc"), default="auto")
    p.add_argument("--split", default="train", help="VOC split (ImageSets/Segmentation/<split>.txt)")

    p = add("export-weights", cmd_export_weights, "write a traced archive (the seeds' weight format) of a model")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--out", required=True, help="archive path, e.g. resnet18_Python.pt")
    p.add_argument("--weights", help="weights to export (checkpoint, state dict or archive); default: random init")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--size", type=int, default=224, help="example input size used for tracing")

    p = add("train", cmd_train, "train a model with the C++ engine (checkpoints, history.json and config.json in --out)")
    p.add_argument("task", choices=("classification", "segmentation"))
    p.add_argument("--train", required=True, help="map file or ImageFolder/VOC folder")
    p.add_argument("--val", help="map file or folder for per-epoch validation")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--weights", help="starting weights (traced archive, torch.save file)")
    p.add_argument("--weights-backbone", help="segmentation: classification weights for the backbone")
    p.add_argument("--mode", choices=("scratch", "finetune", "feature_extractor"),
                   help="default: finetune with --weights, else scratch")
    p.add_argument("--num-classes", type=int, help="default: from the classes file (classification)")
    p.add_argument("--aux-loss", action="store_true", help="segmentation: add the auxiliary head")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--lr-schedule", choices=("constant", "step", "cosine", "poly"))
    p.add_argument("--out", help="run folder (default runs/<task>_<arch>)")
    run_options(p, epochs=10, batch_size=8)

    p = add("evaluate", cmd_evaluate, "evaluate a checkpoint on a map file or folder with the C++ engine")
    p.add_argument("task", nargs="?", choices=("classification", "segmentation"),
                   help="checked against the checkpoint's config.json")
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt of a train run (config.json beside it)")
    p.add_argument("--val", required=True)
    p.add_argument("--arch", help="default: from config.json")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int)
    p.add_argument("--device", default=_device_default())
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quiet", action="store_true")

    p = add("predict", cmd_predict, "top-k classes, or a mask overlay PNG, for images")
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt of a train run (config.json beside it)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--out", default="predictions", help="segmentation: folder for the overlay PNGs")
    p.add_argument("--arch", help="default: from config.json")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--device", default=_device_default())

    p = add("compare", cmd_compare, "train with the C++ engine and the Python twin side by side; write a report")
    p.add_argument("task", choices=("classification", "segmentation"))
    p.add_argument("--train", required=True, help="map file or ImageFolder/VOC folder")
    p.add_argument("--val", required=True)
    p.add_argument("--arch", help="default resnet18 / fcn_resnet50")
    p.add_argument("--weights", help="pretrained start (classification: needed by finetune and feature_extractor)")
    p.add_argument("--weights-backbone", help="segmentation: classification weights for the backbone")
    p.add_argument("--scenarios", default=",".join(("scratch", "finetune", "feature_extractor")),
                   help="classification: comma-separated subset of scratch,finetune,feature_extractor")
    p.add_argument("--num-classes", type=int, help="segmentation: number of classes")
    p.add_argument("--out", help="report folder (default reports/<task>)")
    run_options(p, epochs=5, batch_size=8)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("torchtl: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        if debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"torchtl {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
