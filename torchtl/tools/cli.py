"""The ``torchtl`` command: map files, weights, training, evaluation, prediction and C++-vs-Python comparisons.

Flags follow torchvision's ``references/classification/train.py`` and
``references/segmentation/train.py`` (``--output-dir``, ``-j``, ``--resume``, ``--amp``, ``--wd``,
``--test-only``, ...); earlier names stay as aliases. Every subcommand has ``--help``, with its
defaults. A usage error (a bad flag or value) exits with status 2, a run-time error (a missing or
malformed file, weights that do not fit) with status 1, each with the whole message and no
traceback; ``--debug`` shows the traceback instead. torch is imported inside the commands, so
``--help`` and ``--version`` answer at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_ERROR = 1
EXIT_USAGE = 2
CONFIG = "config.json"
# What a train run writes into its output folder; a second run there would overwrite them.
RUN_FILES = (CONFIG, "history.json", "best.pt", "last.pt")
# Shown by --help; the defaults themselves are the add_argument defaults below.
DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)"


class UsageError(Exception):
    """A command-line value torchtl cannot honour: reported like argparse's own errors (status 2)."""


# ---------------------------------------------------------------------------- argument types

def _number(kind, minimum, *, inclusive=True, maximum=None):
    """An argparse type: ``kind`` (int/float) within bounds, with a message naming them."""
    bound = (f">= {minimum}" if inclusive else f"> {minimum}") + (f" and < {maximum}" if maximum is not None else "")

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} {bound}, "
                                             f"got {text!r}") from None
        ok = (value >= minimum if inclusive else value > minimum) and (maximum is None or value < maximum)
        if not ok or value != value:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} {bound}, "
                                             f"got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


positive_int = _number(int, 1)
nonnegative_int = _number(int, 0)
positive_float = _number(float, 0, inclusive=False)
nonnegative_float = _number(float, 0)
image_size = _number(int, 16)  # the C++ programs' minimum too: smaller inputs vanish in ResNet's strides

# torchvision references' --lr-scheduler names, beside torchtl's own.
_SCHEDULER_ALIASES = {"steplr": "step", "cosineannealinglr": "cosine", "polynomiallr": "poly"}
# The values of fit's string options (torchtl._C.engine.FIT_CHOICES, which tests/test_fit_options.py
# holds these to), written out so that --help answers without importing torch.
TASKS = ("classification", "segmentation")
MODES = ("scratch", "finetune", "feature_extractor")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("constant", "step", "cosine", "poly")
AMP = ("off", "fp16", "bf16")


def _scheduler(text):
    return _SCHEDULER_ALIASES.get(text.lower(), text.lower())


class _BothSizes(argparse.Action):
    """Segmentation's ``--size N``: ``--base-size N --crop-size N`` (later flags still override)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.base_size = namespace.crop_size = values


class _SizeGiven(argparse.Action):
    """--size that remembers it was given (quantize's default is the model file's crop size)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.size = values
        namespace.size_given = True


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where there is a default to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------- shared checks

def _existing_file(path, what="file"):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _existing(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    return path


def _device(name):
    """The device to run on: ``name`` checked, or CUDA when available."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this torch sees no CUDA device")
    return name


def _builder(arch):
    import torchtl

    for namespace in (torchtl.models, torchtl.segmentation):
        if arch in namespace.__all__ and callable(getattr(namespace, arch)):
            return getattr(namespace, arch)
    names = [n for ns in (torchtl.models, torchtl.segmentation) for n in ns.__all__ if n[0].islower()]
    raise UsageError(f"unknown --model '{arch}'; choose from {', '.join(names)}")


def _is_segmentation_arch(arch):
    return arch.startswith(("fcn_", "deeplabv3_"))


def _check_arch(arch, task):
    _builder(arch)
    if _is_segmentation_arch(arch) != (task == "segmentation"):
        raise UsageError(f"--model {arch} is not a {task} model")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or remove it") from None


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
    import warnings

    import torch

    import torchtl

    builder = _builder(args.model)
    if args.weights:
        _existing_file(args.weights, "weights")
    kwargs = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = builder(weights=args.weights, **kwargs)
    if not args.weights:
        print(f"note: no --weights given; {args.model} is exported with random weights "
              "(torchvision's pretrained weights cannot be downloaded here)", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torchtl.export_traced(model, args.out, torch.randn(1, 3, args.size, args.size))
    print(f"wrote {args.out} (traced {args.model}, {sum(p.numel() for p in model.parameters())} parameters)")


def _model_to_package(args):
    """The model ``torchtl export`` / ``quantize`` compile: a model file, or --model with random weights."""
    import warnings

    import torchtl

    if args.model_file:
        _existing_file(args.model_file, "model file")
        return args.model_file
    if not args.model:
        raise UsageError("give a model file (a torchtl model file or a C++ program's best.pt), or --model")
    kwargs = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _builder(args.model)(**kwargs)
    print(f"note: no model file given; {args.model} is exported with random weights", file=sys.stderr)
    return model


def _print_parity(record):
    for inputs, checks in record["checks"].items():
        for against, d in checks.items():
            agreement = next(v for k, v in d.items() if k.endswith("_agreement"))
            print(f"{inputs} inputs {list(record['inputs'][inputs])}, {against.replace('_', ' ')}: "
                  f"largest error {d['max_abs_error']:.3g} on outputs up to {d['max_abs_reference']:.3g} "
                  f"(relative {d['relative_error']:.3g}, tolerance {record['tolerance']['relative']:g}), "
                  f"agreement {agreement:.1%}")
    speed = record.get("speed")
    if speed:
        ratios = ", ".join(f"{k[len('package_vs_'):]} {v:.2f}x" for k, v in speed.items() if k.startswith("package_vs_"))
        print(f"speed (batch {speed['batch']}, load average {speed['load_average']:.1f}): the package runs at {ratios}")


def _package_size(args):
    if len(args.size) > 2:
        raise UsageError(f"--size takes SIZE or HEIGHT WIDTH, got {len(args.size)} numbers")
    return args.size[0] if len(args.size) == 1 else tuple(args.size)


def cmd_export(args):
    import torchtl

    model = _model_to_package(args)
    device = "cpu" if args.device is None else _device(args.device)
    record = torchtl.export(model, args.out, example_size=_package_size(args), dynamic_batch=not args.static_batch,
                            device=device, images=args.images or None)
    _print_parity(record)
    print(f"wrote {args.out} and its parity record {os.path.splitext(args.out)[0]}.parity.json")


def cmd_quantize(args):
    import torchtl

    _existing_file(args.calibration, "calibration map file")
    if args.check:
        _existing_file(args.check, "check map file")
    model = _model_to_package(args)
    size = _package_size(args)
    record = torchtl.quantize(model, args.calibration, args.out, example_size=size if args.size_given else None,
                              check_map_file=args.check, calibration_images=args.calibration_images,
                              min_agreement=args.min_agreement)
    _print_parity(record)
    print(f"wrote {args.out} (int8, calibrated on {record['calibration']['images']} images) and its parity record "
          f"{os.path.splitext(args.out)[0]}.parity.json")


def _train_maps(args):
    """(train, val) as given: --train/--val, or --data-path's train/ and val/ (a VOC root: both splits)."""
    if args.data_path is None:
        if args.train is None and not args.test_only:
            raise UsageError("give --train (a map file or folder) or --data-path")
        return args.train, args.val
    if args.train is not None or args.val is not None:
        raise UsageError("give --data-path or --train/--val, not both")
    _existing(args.data_path)
    if args.task == "segmentation":
        return args.data_path, args.data_path  # VOC: ImageSets/Segmentation/{train,val}.txt
    return os.path.join(args.data_path, "train"), os.path.join(args.data_path, "val")


def _output_dir(args):
    """The run folder; a folder holding an earlier run is continued with --resume, never overwritten."""
    out = args.output_dir or (os.path.dirname(os.path.abspath(args.resume)) if args.resume
                              else os.path.join("runs", f"{args.task}_{args.model}"))
    if not args.resume:
        earlier = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
        if earlier and "last.pt" in earlier:
            raise UsageError(f"{out} already holds a run ({', '.join(earlier)}); choose another --output-dir, "
                             f"or continue it with --resume {os.path.join(out, 'last.pt')}")
        if earlier:  # no last.pt (removed, or a run killed in its first writes): nothing to resume
            raise UsageError(f"{out} holds files of an earlier run ({', '.join(earlier)}) but no last.pt, so that "
                             f"run cannot be resumed; to start a new one, move {', '.join(earlier)} out of it or "
                             "choose another --output-dir")
    return out


def _check_resumed_config(path, config, mode_given):
    """Under --resume, the run folder's config.json must describe the same model and data; the
    earlier run's mode continues unless --mode is given."""
    earlier = _read_json(path)
    if not mode_given and "mode" in earlier:
        config["mode"] = earlier["mode"]
    keys = ("task", "arch", "num_classes", "size", "aux_loss", "mode")
    differ = [f"{k}: {earlier.get(k)!r} before, {config[k]!r} now" for k in keys
              if k in earlier and earlier.get(k) != config[k]]
    if differ:
        raise UsageError(f"--resume continues the run in {os.path.dirname(path)}, whose {CONFIG} differs: "
                         + "; ".join(differ))


def _print_epochs(history, task):
    for e in history["epochs"]:
        line = f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}"
        if "train_acc" in e:
            line += f", train acc {e['train_acc']:.3f}"
        if "val" in e:
            v = e["val"]
            line += (f", val loss {v['loss']:.4f}, val acc {v['acc1']:.3f}" if task == "classification"
                     else f", val loss {v['loss']:.4f}, mIoU {v['miou']:.3f}, pixel acc {v['pixel_acc']:.3f}")
        line += f", {e['images_per_second']:.1f} img/s"
        print(line)


def cmd_train(args):
    import warnings

    import torch

    import torchtl
    from torchtl import data
    from torchtl.tools import compare

    task = args.task
    segmentation = task == "segmentation"
    # Everything is checked before anything is written.
    _check_arch(args.model, task)
    device = _device(args.device)
    if args.amp == "fp16" and not device.startswith("cuda"):
        raise UsageError(f"--amp fp16 needs a CUDA device, not --device {device}; on the CPU use --amp bf16")
    if args.amp == "bf16" and device == "cpu":
        from torchtl import fast_path

        if not fast_path.cpu_supports_bf16():
            raise UsageError("--amp bf16 on the CPU needs AVX-512 BF16 or AMX, which this CPU lacks")
    train_path, val_path = _train_maps(args)
    if args.test_only and val_path is None:
        raise UsageError("--test-only evaluates on --val (or --data-path's val/); give one")
    if args.test_only and not (args.weights or args.resume):
        raise UsageError("--test-only evaluates --weights or --resume; give one")
    for flag, path in (("--weights", args.weights), ("--weights-backbone", getattr(args, "weights_backbone", None)),
                       ("--resume", args.resume)):
        if path:
            _existing_file(path, flag)
    for path in (train_path, val_path):
        if path is not None:
            _existing(path)
    pretrained = args.weights or getattr(args, "weights_backbone", None)
    mode = args.mode or ("finetune" if pretrained else "scratch")
    if mode == "scratch" and pretrained:
        raise UsageError("--mode scratch starts from random weights; drop --weights or choose finetune")
    if mode == "feature_extractor" and not (args.weights or getattr(args, "weights_backbone", None) or args.resume):
        raise UsageError("--mode feature_extractor needs --weights: a random backbone extracts nothing")
    size = args.base_size if segmentation else args.size
    if args.test_only:
        return _test_only(args, task, device, val_path, size)

    # Under torchrun every rank joins the group first and checks the run folder; then rank 0 alone
    # writes map files, config and output lines.
    group = torchtl.engine.process_group(device)
    main = group is None or group.rank() == 0
    out = _output_dir(args)
    config_path = os.path.join(out, CONFIG)
    if group is not None:
        torch.distributed.barrier()
    maps = [None, None]
    if main:
        maps = [compare.resolve_map(train_path, out, "train"), compare.resolve_map(val_path, out, "val") if val_path else None]
    if group is not None:
        torch.distributed.broadcast_object_list(maps, src=0)
    train_map, val_map = maps
    torch.manual_seed(args.seed)
    classes = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not segmentation:
            # The C++ reader checks every line here (and names the file and line at fault).
            num_classes = args.num_classes if args.num_classes is not None else data.count_classes(train_map)
            classes_file = data.find_classes_file(train_map)
            classes = data.read_classes(classes_file) if classes_file is not None else None
            train, val = compare.classification_loaders(train_map, val_map or train_map, size=size,
                                                        batch_size=args.batch_size, workers=args.workers,
                                                        seed=args.seed)
            model = _builder(args.model)(num_classes=num_classes, weights=args.weights)
        else:
            num_classes = args.num_classes
            train, val = compare.segmentation_loaders(train_map, val_map or train_map, size=size,
                                                      crop_size=args.crop_size, batch_size=args.batch_size,
                                                      workers=args.workers, seed=args.seed, num_classes=num_classes)
            model = _builder(args.model)(num_classes=num_classes, aux_loss=args.aux_loss, weights=args.weights,
                                         weights_backbone=args.weights_backbone)
    config = dict(task=task, arch=args.model, num_classes=num_classes, size=size, classes=classes,
                  aux_loss=bool(getattr(args, "aux_loss", False)), mode=mode, train=train_map, val=val_map)
    if args.resume and os.path.isfile(config_path):
        _check_resumed_config(config_path, config, mode_given=args.mode is not None)
        mode = config["mode"]
    elif main:
        os.makedirs(out, exist_ok=True)
        with open(config_path, "w") as f:
            json.dump(config, f, indent=1)
    history = torchtl.engine.fit(
        model, train, val if val_map else None, task=task, mode=mode,
        optimizer="sgd" if args.opt == "sgd_nesterov" else args.opt, nesterov=args.opt == "sgd_nesterov",
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, epochs=args.epochs,
        lr_schedule=args.lr_scheduler, step_size=args.lr_step_size, gamma=args.lr_gamma,
        warmup_epochs=args.lr_warmup_epochs, label_smoothing=getattr(args, "label_smoothing", 0.0),
        device=device, amp=args.amp, sync_bn=args.sync_bn, checkpoint_dir=out, resume=args.resume, seed=args.seed,
        progress=not args.quiet)
    if not main:
        return
    if args.quiet:  # otherwise fit printed each epoch's line as the epoch ended
        _print_epochs(history, task)
    print(f"checkpoints and history in {out}/ (best.pt, last.pt, history.json, {CONFIG})")


def _test_only(args, task, device, val_path, size):
    """--test-only: evaluate the given weights on the validation data; nothing is written."""
    import tempfile
    import warnings

    import torchtl
    from torchtl import data
    from torchtl.tools import compare

    with tempfile.TemporaryDirectory() as scratch:  # a folder given as --val is listed here
        val_map = compare.resolve_map(val_path, scratch, "val")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weights = args.resume or args.weights
            if task == "classification":
                num_classes = args.num_classes if args.num_classes is not None else data.count_classes(val_map)
                _, val = compare.classification_loaders(val_map, val_map, size=size, batch_size=args.batch_size,
                                                        workers=args.workers)
                model = _builder(args.model)(num_classes=num_classes, weights=weights)
            else:
                _, val = compare.segmentation_loaders(val_map, val_map, size=size, workers=args.workers)
                model = _builder(args.model)(num_classes=args.num_classes, aux_loss=args.aux_loss, weights=weights)
        r = torchtl.engine.evaluate(model, val, task=task, device=device, progress=not args.quiet)
        _print_evaluation(val_path, len(val.dataset), task, r)


def _print_evaluation(name, images, task, r):
    if task == "classification":
        print(f"{name}: {images} images, loss {r['loss']:.4f}, acc@1 {r['acc1']:.4f}, acc@5 {r['acc5']:.4f}")
    else:
        print(f"{name}: {images} images, loss {r['loss']:.4f}, mIoU {r['miou']:.4f}, pixel acc {r['pixel_acc']:.4f}")


def _load_config(checkpoint, args):
    _existing_file(checkpoint, "checkpoint")
    config_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), CONFIG)
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} does not hold a JSON object")
    for key, value in (("arch", args.model), ("num_classes", args.num_classes), ("size", args.size)):
        if value is not None:
            config[key] = value
    if "arch" not in config:
        raise UsageError(f"no {CONFIG} next to {checkpoint}: give --model (and --num-classes for segmentation)")
    _builder(config["arch"])
    config.setdefault("task", "segmentation" if _is_segmentation_arch(config["arch"]) else "classification")
    config.setdefault("size", 224 if config["task"] == "classification" else 520)
    return config


def _load_model(checkpoint, config):
    kwargs = {}
    if config.get("num_classes"):
        kwargs["num_classes"] = config["num_classes"]
    if config["task"] == "segmentation":
        kwargs["aux_loss"] = config.get("aux_loss", False)
    return _builder(config["arch"])(weights=checkpoint, **kwargs)


def cmd_evaluate(args):
    import torchtl
    from torchtl.tools import compare

    config = _load_config(args.checkpoint, args)
    if args.task and args.task != config["task"]:
        raise UsageError(f"the checkpoint is a {config['task']} model, not {args.task}")
    device = _device(args.device)
    _existing(args.val)
    model = _load_model(args.checkpoint, config)
    val_map = compare.resolve_map(args.val, os.path.dirname(os.path.abspath(args.checkpoint)), "val")
    if config["task"] == "classification":
        _, val = compare.classification_loaders(val_map, val_map, size=config["size"], batch_size=args.batch_size,
                                                workers=args.workers)
    else:
        _, val = compare.segmentation_loaders(val_map, val_map, size=config["size"], workers=args.workers)
    r = torchtl.engine.evaluate(model, val, task=config["task"], device=device, progress=not args.quiet)
    _print_evaluation(val_map, len(val.dataset), config["task"], r)


def _images(paths):
    """Image files from files and folders (a folder's images as ImageFolder finds them, sorted)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    found = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path, followlinks=True)
                            for name in names if name.lower().endswith(IMG_EXTENSIONS))
            if not inside:
                raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) in folder {path}")
            found += inside
        else:
            found.append(_existing_file(path, "image"))
    return found


def _model_file(checkpoint, args, folder):
    """The model file to predict with: the checkpoint itself when it carries torchtl's metadata and no
    flag overrides it, else one written into ``folder`` from config.json and the flags (an earlier
    run's bare best.pt)."""
    import torchtl
    from torchtl import data

    _existing_file(checkpoint, "checkpoint")
    if torchtl.read_model_metadata(checkpoint) is not None and args.model is None and args.num_classes is None \
            and args.size is None:
        return checkpoint
    config = _load_config(checkpoint, args)
    model = _load_model(checkpoint, config)
    size = config["size"]
    mean, std = list(data.IMAGENET_MEAN), list(data.IMAGENET_STD)
    if config["task"] == "segmentation":
        transform = {"resize_size": size, "mean": mean, "std": std}
    else:
        transform = {"resize_size": size if size < 128 else size * 256 // 224, "crop_size": size,
                     "interpolation": "bilinear", "mean": mean, "std": std}
    return torchtl.save_model(model, os.path.join(folder, "model.pt"), classes=config.get("classes"),
                              transform=transform)


def cmd_predict(args):
    import tempfile

    import torch
    from torchvision.io import write_png

    import torchtl
    from torchtl import data
    from torchtl.tools import compare

    # A package (.pt2) runs where it was compiled to run unless --device says otherwise.
    package = args.checkpoint.endswith(".pt2")
    device = None if package and args.device is None else _device(args.device)
    images = _images(args.images)
    with tempfile.TemporaryDirectory() as folder:
        # torchtl.Predictor is the C++ Predictor that the C++ predict program runs: one implementation.
        predictor = torchtl.Predictor(_model_file(args.checkpoint, args, folder), device=device,
                                      batch_size=args.batch_size, num_workers=args.workers)
    if predictor.task == "classification":
        for path, predictions in zip(images, predictor.classify(images, topk=args.topk)):
            if args.json:
                print(json.dumps({"image": path, "predictions": [
                    {"index": p.index, "label": p.label, "probability": p.probability} for p in predictions]}))
            else:
                print(path + ": " + ", ".join(f"{p.label} {p.probability:.3f}" for p in predictions))
        return
    stems = {}
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise UsageError(f"{stems[stem]} and {path} would both write {stem}_mask.png into {args.out}")
        stems[stem] = path
        for suffix in ("_mask.png", "_overlay.png"):
            earlier = os.path.join(args.out, stem + suffix)
            if os.path.exists(earlier):
                raise UsageError(f"{earlier} exists (an earlier predict wrote it?); it is never overwritten: "
                                 "choose another --out or move it away")
    # The masks are at each image's own size: the scores are resized back before the argmax.
    masks = predictor.segment(images)
    os.makedirs(args.out, exist_ok=True)
    for path, mask in zip(images, masks):
        stem = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0])
        write_png(mask.to(torch.uint8)[None], stem + "_mask.png")
        write_png(compare.overlay(data.read_image(path), mask), stem + "_overlay.png")
        present = torch.bincount(mask.flatten())
        if args.json:
            print(json.dumps({"image": path, "mask": stem + "_mask.png", "overlay": stem + "_overlay.png",
                              "pixels": present.tolist()}))
            continue
        share = ", ".join(f"class {c} {n / mask.numel():.1%}" for c, n in enumerate(present.tolist()) if n)
        print(f"{path}: wrote {stem}_mask.png (class indices) and {stem}_overlay.png ({share})")


def cmd_compare(args):
    from torchtl.tools import compare

    _check_arch(args.model, args.task)
    device = _device(args.device)
    for flag, path in (("--weights", args.weights), ("--weights-backbone", getattr(args, "weights_backbone", None))):
        if path:
            _existing_file(path, flag)
    _existing(args.train)
    _existing(args.val)
    out = args.output_dir or os.path.join("reports", args.task)
    log = (lambda *a: None) if args.quiet else print
    if args.task == "classification":
        scenarios = args.scenarios.split(",")
        bad = [s for s in scenarios if s not in compare.SCENARIOS]
        if bad:
            raise UsageError(f"unknown scenario '{bad[0]}'; choose from {', '.join(compare.SCENARIOS)}")
        if args.weights is None and any(s != "scratch" for s in scenarios):
            raise UsageError("finetune and feature_extractor need --weights (a pretrained model of the same arch)")
        report = compare.compare_classification(
            args.train, args.val, out, weights=args.weights, arch=args.model, scenarios=scenarios,
            epochs=args.epochs, batch_size=args.batch_size, size=args.size, lr=args.lr, device=device,
            seed=args.seed, workers=args.workers, progress=not args.quiet, log=log)
    else:
        report = compare.compare_segmentation(
            args.train, args.val, out, arch=args.model, num_classes=args.num_classes,
            weights=args.weights, weights_backbone=args.weights_backbone, epochs=args.epochs,
            batch_size=args.batch_size, size=args.size, lr=args.lr, device=device, seed=args.seed,
            workers=args.workers, progress=not args.quiet, log=log)
    print(report["table"])
    print(f"report: {os.path.join(out, 'report.md')}")


# ---------------------------------------------------------------------------- parser

# The defaults of each task; the C++ example programs use the same ones (tests/cpp checks them).
CLASSIFICATION = dict(model="resnet18", epochs=10, batch_size=8, lr=0.01, size=224, lr_scheduler="cosine")
SEGMENTATION = dict(model="fcn_resnet50", epochs=10, batch_size=4, lr=0.01, base_size=520, crop_size=480,
                    lr_scheduler="poly")


CLASSIFICATION_MODELS = "resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d/64x4d, wide_resnet50_2/101_2"
SEGMENTATION_MODELS = "fcn_resnet50/101, deeplabv3_resnet50/101"


def _version():
    import torchtl

    return f"torchtl {torchtl.__version__}"


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    parser = argparse.ArgumentParser(
        prog="torchtl", parents=[common], formatter_class=_Formatter,
        description="torchvision's ResNet/FCN/DeepLabV3 trained in C++ (LibTorch), with Python twins to compare.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(parent, name, func, help):
        p = parent.add_parser(name, parents=[common], help=help, description=help, formatter_class=_Formatter)
        p.set_defaults(func=func)
        return p

    def tasks(p, dest="task"):
        return p.add_subparsers(dest=dest, metavar="TASK", required=True)

    def model_option(p, default):
        p.add_argument("--model", "--arch", dest="model", default=default,
                       help=SEGMENTATION_MODELS if _is_segmentation_arch(default) else CLASSIFICATION_MODELS)

    def run_options(p, defaults, epochs=None):
        p.add_argument("--epochs", type=positive_int, default=epochs or defaults["epochs"], help="epochs to train")
        p.add_argument("-b", "--batch-size", type=positive_int, default=defaults["batch_size"],
                       help="images per training batch")
        p.add_argument("--lr", type=positive_float, default=defaults["lr"], help="learning rate")
        p.add_argument("--device", default=None, help=DEVICE_HELP)
        p.add_argument("-j", "--workers", type=nonnegative_int, default=2, help="C++ loader threads")
        p.add_argument("--seed", type=nonnegative_int, default=0,
                       help="fixes sampling order, augmentation and initialisation")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    def data_options(p, required=False):
        p.add_argument("--train", required=required, help="map file or ImageFolder/VOC folder")
        p.add_argument("--val", required=required, help="map file or folder for per-epoch validation")

    p = add(sub, "make-map", cmd_make_map, "write a map file for an ImageFolder tree or a PASCAL VOC folder")
    p.add_argument("root", help="ImageFolder root (root/<class>/<images>) or VOC root (JPEGImages, SegmentationClass)")
    p.add_argument("out", help="map file to write (ImageFolder: also <stem>_classes<ext>, e.g. train_classes.txt)")
    p.add_argument("--layout", choices=("auto", "imagefolder", "voc"), default="auto",
                   help="auto: VOC when ROOT has JPEGImages and SegmentationClass")
    p.add_argument("--split", default="train", help="VOC split (ImageSets/Segmentation/<split>.txt)")

    p = add(sub, "export-weights", cmd_export_weights, "write a traced archive (torch.jit.save) of a model")
    model_option(p, "resnet18")
    p.add_argument("--out", required=True, help="archive path, e.g. resnet18_traced.pt")
    p.add_argument("--weights", help="weights to export (checkpoint, state dict or archive); default: random init")
    p.add_argument("--num-classes", type=positive_int, help="default: the builder's (1000, or 21 for segmentation)")
    p.add_argument("--size", type=image_size, default=224, help="example input size used for tracing")

    def package_options(p):
        p.add_argument("model_file", nargs="?", help="torchtl model file (or a C++ program's best.pt)")
        p.add_argument("--out", required=True, help="package path, e.g. model.pt2")
        p.add_argument("--model", "--arch", dest="model", help="without a model file: this builder, random weights")
        p.add_argument("--num-classes", type=positive_int, help="with --model: the head's classes")

    p = add(sub, "export", cmd_export, "compile a model into an AOTInductor package (.pt2) for plain LibTorch, "
            "checked against torchtl and torchvision (parity record beside it)")
    package_options(p)
    p.add_argument("--size", type=image_size, nargs="+", default=[224],
                   help="input size the package takes: SIZE or HEIGHT WIDTH")
    p.add_argument("--images", nargs="+", help="image files or folders checked as real inputs (up to 32 images)")
    p.add_argument("--static-batch", action="store_true", help="a package for batches of 2 only")
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:N]: where the package runs")

    p = add(sub, "quantize", cmd_quantize, "int8 AOTInductor package (.pt2) of a classification model for the CPU: "
            "post-training static quantization calibrated on a map file's images, checked against fp32")
    package_options(p)
    p.set_defaults(size_given=False)
    p.add_argument("--size", type=image_size, nargs="+", action=_SizeGiven, default=[224],
                   help="input size the package takes (default: the model file's crop size)")
    p.add_argument("--calibration", required=True, help="map file whose images calibrate the int8 ranges")
    p.add_argument("--calibration-images", type=positive_int, default=256, help="calibrate on the first N images")
    p.add_argument("--check", help="map file of the images compared with fp32 (default: the calibration images)")
    p.add_argument("--min-agreement", type=_number(float, 0, maximum=1.0000001), default=0.99,
                   help="least top-1 agreement with fp32 accepted")

    train_tasks = tasks(add(sub, "train", cmd_train, "train a model with the C++ engine (checkpoints, "
                            "history.json and config.json in --output-dir)"))
    for task, d in (("classification", CLASSIFICATION), ("segmentation", SEGMENTATION)):
        p = add(train_tasks, task, cmd_train,
                f"train a {task} model with the C++ engine, as torchvision's references/{task}/train.py")
        data_options(p)
        p.add_argument("--data-path", help="folder with train/ and val/ image folders"
                       if task == "classification" else "VOC root (its train and val splits)")
        model_option(p, d["model"])
        p.add_argument("--weights", help="starting weights (traced archive, state dict or checkpoint)")
        if task == "segmentation":
            p.add_argument("--weights-backbone", help="classification weights for the backbone")
        p.add_argument("--mode", choices=MODES,
                       help="default: finetune with --weights, else scratch")
        if task == "classification":
            p.add_argument("--num-classes", type=positive_int,
                           help="default: the classes file beside the map file, else the largest label + 1")
        else:
            p.add_argument("--num-classes", type=positive_int, required=True, help="21 for PASCAL VOC")
            p.add_argument("--aux-loss", action="store_true", help="add the auxiliary head (loss weight 0.5)")
        p.add_argument("--opt", "--optimizer", dest="opt", choices=(*OPTIMIZERS, "sgd_nesterov"),
                       default="sgd", help="optimizer")
        p.add_argument("--momentum", type=nonnegative_float, default=0.9, help="SGD momentum")
        p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=nonnegative_float, default=1e-4,
                       help="weight decay")
        if task == "classification":
            p.add_argument("--label-smoothing", type=_number(float, 0, maximum=1), default=0.0,
                           help="label smoothing of the cross-entropy loss")
        p.add_argument("--lr-scheduler", "--lr-schedule", dest="lr_scheduler", type=_scheduler, choices=SCHEDULERS,
                       default=d["lr_scheduler"], help="also steplr, cosineannealinglr, polynomiallr")
        p.add_argument("--lr-warmup-epochs", type=nonnegative_int, default=0, help="epochs of linear warm-up")
        p.add_argument("--lr-step-size", type=positive_int, default=7, help="--lr-scheduler step: epochs per decay")
        p.add_argument("--lr-gamma", type=positive_float, default=0.1, help="--lr-scheduler step: decay factor")
        if task == "classification":
            p.add_argument("--size", type=image_size, default=d["size"],
                           help="training crop and evaluation size (evaluation resizes to size*256/224 first)")
        else:
            p.add_argument("--base-size", type=image_size, default=d["base_size"],
                           help="shorter side of the evaluation images; training scales it by 0.5x to 2x")
            p.add_argument("--crop-size", type=image_size, default=d["crop_size"], help="training crop")
            p.add_argument("--size", type=image_size, action=_BothSizes,
                           help="--base-size and --crop-size at once")
        p.add_argument("--amp", nargs="?", const="fp16", default="off", choices=AMP,
                       help="mixed precision: bf16 (CUDA, or a CPU with AVX-512 BF16 or AMX) or fp16 (CUDA; "
                            "--amp alone)")
        p.add_argument("--sync-bn", action="store_true",
                       help="under torchrun, batch norm statistics over all ranks' batches (SyncBatchNorm)")
        p.add_argument("--resume", help="last.pt of a run to continue (its folder is the default --output-dir)")
        p.add_argument("--test-only", action="store_true",
                       help="only evaluate --weights or --resume on --val; write nothing")
        p.add_argument("--output-dir", "--out", dest="output_dir",
                       help="run folder (default runs/<task>_<model>); an earlier run there is never overwritten")
        run_options(p, d)

    p = add(sub, "evaluate", cmd_evaluate, "evaluate a checkpoint on a map file or folder with the C++ engine")
    p.add_argument("task", nargs="?", choices=TASKS,
                   help="checked against the checkpoint's config.json")
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt of a train run (config.json beside it)")
    p.add_argument("--val", required=True, help="map file or folder")
    p.add_argument("--model", "--arch", dest="model", help="default: from config.json")
    p.add_argument("--num-classes", type=positive_int, help="default: from config.json")
    p.add_argument("-b", "--batch-size", type=positive_int, default=8, help="images per batch (classification)")
    p.add_argument("--size", type=image_size, help="default: from config.json")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("-j", "--workers", type=nonnegative_int, default=2, help="C++ loader threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add(sub, "predict", cmd_predict, "top-k classes, or a class-index mask and an overlay PNG, for images")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", required=True,
                   help="model file: best.pt of a train run or torchtl.save_model's file, or a package (.pt2) "
                        "of torchtl export / quantize (required)")
    p.add_argument("--topk", type=positive_int, default=5, help="classes printed per image (at most all)")
    p.add_argument("--out", default="predictions",
                   help="segmentation: folder for <image>_mask.png (class indices) and <image>_overlay.png")
    p.add_argument("--json", action="store_true", help="one JSON object a line instead of text")
    p.add_argument("-b", "--batch-size", type=positive_int, default=8, help="images per model call (classification)")
    p.add_argument("-j", "--workers", type=nonnegative_int, default=2,
                   help="C++ loader threads that decode while the model runs")
    p.add_argument("--model", "--arch", dest="model",
                   help="default: the model file's metadata (an older run's bare best.pt: config.json)")
    p.add_argument("--num-classes", type=positive_int, help="default: the model file's metadata, or config.json")
    p.add_argument("--size", type=image_size, help="default: the model file's metadata, or config.json")
    p.add_argument("--device", default=None, help=DEVICE_HELP)

    compare = add(sub, "compare", cmd_compare,
                  "train with the C++ engine and the Python twin side by side; write a report")
    compare_tasks = tasks(compare)
    for task, d in (("classification", CLASSIFICATION), ("segmentation", SEGMENTATION)):
        p = add(compare_tasks, task, cmd_compare, f"{task}: C++ engine vs Python twin; a report in --output-dir")
        data_options(p, required=True)
        model_option(p, d["model"])
        p.add_argument("--weights", help="pretrained start (classification: needed by finetune and feature_extractor)")
        if task == "classification":
            p.add_argument("--scenarios", default=",".join(("scratch", "finetune", "feature_extractor")),
                           help="comma-separated subset of scratch,finetune,feature_extractor")
            p.add_argument("--size", type=image_size, default=64, help="training crop and evaluation size")
        else:
            p.add_argument("--weights-backbone", help="classification weights for the backbone")
            p.add_argument("--num-classes", type=positive_int, required=True, help="21 for PASCAL VOC")
            p.add_argument("--size", type=image_size, default=64, help="base and crop size")
        p.add_argument("--output-dir", "--out", dest="output_dir", help="report folder (default reports/<task>)")
        run_options(p, d, epochs=5)
    return parser


def _message(e):
    text = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    return text or type(e).__name__


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    name = " ".join(a for a in (args.command, getattr(args, "task", None)) if a)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("torchtl: interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        if debug:
            raise
        print(f"torchtl {name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001  (the user sees the message; --debug shows the traceback)
        if debug:
            raise
        known = isinstance(e, (OSError, ValueError, RuntimeError, TypeError, KeyError, IndexError))
        kind = "error" if known else f"error ({type(e).__name__})"
        print(f"torchtl {name}: {kind}: {_message(e)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
