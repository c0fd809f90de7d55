"""int8 inference on the CPU: post-training static quantization into an AOTInductor package.

``quantize(model_file, calibration_map_file, "model_int8.pt2")`` follows torchao's PT2E flow with
``X86InductorQuantizer`` (the successor of ``torch.ao.quantization``, which torchvision's quantized
ResNets sit on): ``torch.export``, ``prepare_pt2e`` (observers on every convolution, linear layer
and residual addition), calibration on the map file's images through torchtl's own data pipeline
and the model file's evaluation transform, ``convert_pt2e``, and an AOTInductor compile with
freezing, which lowers the quantized convolutions to oneDNN's int8 kernels (VNNI where the CPU has
it). The package is a ``.pt2`` like ``torchtl.export``'s, with ``"precision": "int8"``, and runs in
the same runners (``torch._inductor.aoti_load_package``, ``torchtl::predict::CompiledModel``).

It then checks itself on the images of ``check_map_file`` (default: the calibration images) against
torchtl's fp32 C++ forward and torchvision's eager model, and times itself against torchtl fp32
and, where the CPU has native bf16, torchtl under bf16 autocast. int8 changes the numbers by
design, so the check that refuses a package is top-1 agreement with fp32 (``min_agreement``,
default 0.99), not the float tolerance of ``torchtl.export``. The parity record says the rest.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from torchtl import pt2

__all__ = ["quantize", "DEFAULT_MIN_AGREEMENT"]

DEFAULT_MIN_AGREEMENT = 0.99


def _loader(map_file, size: int, transform: dict, batch_size: int):
    from torchtl import data

    map_file = os.fspath(map_file)
    if not os.path.isfile(map_file):
        raise FileNotFoundError(f"map file not found: {map_file}")
    crop, resize = transform.get("crop_size"), transform.get("resize_size")
    # The package's input size takes the place of the transform's crop; the resize keeps its ratio.
    resize = round(size * resize / crop) if crop and resize else size
    t = data.classification_transform(train=False, size=size, resize_size=resize,
                                      mean=transform.get("mean", data.IMAGENET_MEAN),
                                      std=transform.get("std", data.IMAGENET_STD))
    dataset = data.MapDataset(map_file, transform=t)
    return data.DataLoader(dataset, batch_size, shuffle=False, num_workers=2, seed=0)


def _images(loader, limit: Optional[int]) -> torch.Tensor:
    batches, count = [], 0
    for images, _ in loader:
        batches.append(images)
        count += len(images)
        if limit is not None and count >= limit:
            break
    if not batches:
        raise ValueError(f"map file {loader.dataset.map_file} lists no images")
    out = torch.cat(batches)
    return out[:limit] if limit is not None else out


def _int8_program(model, example, calibration: torch.Tensor, batch_size: int, dynamic_batch: bool):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    # Importing the quantizer also registers its int8 lowering passes with Inductor.
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    batch = {0: torch.export.Dim("batch", min=1, max=4096)} if dynamic_batch else None
    shapes = (batch,) if batch else None
    # strict=True: the quantizer finds conv + add + relu patterns through the source_fn_stack
    # metadata, which only Dynamo's tracing records; without it a module called twice (torchvision's
    # blocks call self.relu twice) reads as one partition with two outputs, and prepare_pt2e fails.
    with torch.no_grad():
        graph = torch.export.export(model, (example,), dynamic_shapes=shapes, strict=True).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration), batch_size):
            prepared(calibration[start:start + batch_size])
    converted = convert_pt2e(prepared)
    with torch.no_grad():
        return torch.export.export(converted, (example,), dynamic_shapes=shapes)


def quantize(model_file, calibration_map_file, out, *, example_size=None, check_map_file=None,
             calibration_images: Optional[int] = 256, batch_size: int = 8, dynamic_batch: bool = True,
             classes=None, transform=None, min_agreement: float = DEFAULT_MIN_AGREEMENT,
             speed_repeats: int = 5) -> dict:
    """Writes an int8 AOTInductor package of a classification model to ``out`` (``.pt2``) and returns
    its parity record.

    Args:
        model_file: a torchtl model file (a C++ program's ``best.pt`` included) or a torchtl module.
        calibration_map_file: a classification map file whose images (the first
            ``calibration_images``; None: all) calibrate the activation ranges.
        example_size: the input size the package takes (default: the model file's crop size).
        check_map_file: the images the int8 model is compared on (default: the calibration images).
        classes, transform: as for ``torchtl.export`` (default: the model file's).
        min_agreement: the least top-1 agreement with fp32 accepted.

    Raises pt2.ExportParityError (writing only the record beside ``out``) when top-1 agreement with
    torchtl's fp32 forward falls below ``min_agreement``.
    """
    from torchtl import fast_path

    out = os.fspath(out)
    if not out.endswith(".pt2"):
        raise ValueError(f"an AOTInductor package's name ends in .pt2, got {out}")
    model, metadata = pt2._open(model_file, classes, transform)
    if metadata["task"] != "classification":
        raise ValueError("torchtl.quantize makes int8 packages of classification models; "
                         f"{metadata['builder']} is a {metadata['task']} model (export it in float32 with torchtl.export)")
    eval_transform = metadata["transform"] or {}
    size = pt2._size_pair(example_size if example_size is not None else eval_transform.get("crop_size", 224))
    if size[0] != size[1]:
        raise ValueError(f"torchtl's evaluation transform crops squares; got example_size {example_size!r}")
    model = model.eval().cpu()
    twin = model.to_torchvision().eval()
    calibration = _images(_loader(calibration_map_file, size[0], eval_transform, batch_size), calibration_images)
    checked = calibration if check_map_file is None else _images(_loader(check_map_file, size[0], eval_transform,
                                                                         batch_size), None)
    program = _int8_program(model, calibration[:2], calibration, batch_size, dynamic_batch)
    package = {"input_size": list(size), "dynamic_batch": bool(dynamic_batch), "device": "cpu", "precision": "int8",
               "output": "logits"}
    files = pt2._compile(program, calibration[:2], package, "classification", None)
    references = {"torchtl": model, "torchvision": twin}
    if fast_path.cpu_supports_bf16():
        def torchtl_bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)
        speed_references = {**references, "torchtl_bf16": torchtl_bf16}
    else:
        speed_references = references
    record = pt2._check(out, files, metadata, package, "classification", {"real": checked}, references, pt2.RELATIVE_TOLERANCE,
                        speed_repeats, speed_batch=checked[:batch_size], speed_runs=speed_references)
    record["tolerance"] = {"min_top1_agreement": min_agreement, "against": "torchtl"}
    record["calibration"] = {"map_file": os.fspath(calibration_map_file), "images": len(calibration)}
    record["builder"] = metadata["builder"]
    agreement = record["checks"]["real"]["against_torchtl"]["top1_agreement"]
    gap = None
    if not agreement >= min_agreement:
        gap = (f"agrees with torchtl's fp32 top-1 on {agreement:.1%} of the {len(checked)} images, below the "
               f"{min_agreement:.1%} asked (min_agreement); calibrate on more or more typical images")
    return pt2._finish(out, files, metadata, record, gap)
