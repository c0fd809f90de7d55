"""Inference speed against torchvision's default execution, same weights, same run.

Columns, each as a speedup over torchvision's default (fp32, contiguous batch, the model as
built; above 1.00: faster than it); for segmentation_models_pytorch's architectures
(``Unet_resnet34``, ``FPN_resnet34``, ``DeepLabV3Plus_resnet34``) the reference is smp's own model:

- ``compile``: ``torch.compile`` of torchvision's model, the peer a speed-seeking user picks
  (compiled and warmed up before timing);
- ``torchtl``: ``builder().eval()`` then a plain call on the same contiguous batch (the fast
  path: channels_last inside the C++ forward, batch norm folded);
- ``torchtl bf16``: the same under ``torch.autocast(device, dtype=torch.bfloat16)`` (CPU: only
  where ``torchtl.cpu_supports_bf16()``);
- with ``--means``, each means on its own on torchvision's model: ``tv cl`` (weights and batch in
  channels_last) and ``tv cl bf16`` (that under bf16 autocast).

Every call runs under ``torch.no_grad()``. Runs are interleaved (each variant once per round) so
that machine noise hits all alike; each figure is the median over --repeats rounds after warm-up.
The last columns compare outputs with torchvision's: the largest error relative to the largest
output, and the share of equal top-1 classes (per pixel for segmentation).

    python benchmarks/models.py                                  # CPU, and CUDA when present
    python benchmarks/models.py --archs resnet18 --repeats 5 --device cpu --no-compile
    python benchmarks/models.py --pass train                     # forward+backward, train mode
    python benchmarks/models.py --means --no-compile             # what channels_last, bf16 give alone
"""
import argparse
import os
import statistics
import time

import torch
import torchvision

import torchtl

SIZES = {"resnet18": (8, 224), "resnet50": (8, 224), "deeplabv3_resnet50": (2, 256), "fcn_resnet50": (2, 256),
         # segmentation_models_pytorch's architectures: the "torchvision" column is smp's own model.
         "Unet_resnet34": (2, 256), "FPN_resnet34": (2, 256), "DeepLabV3Plus_resnet34": (2, 256)}


def build_pair(arch):
    if arch.split("_")[0] in ("Unet", "FPN", "DeepLabV3Plus"):
        import segmentation_models_pytorch as smp

        name, encoder = arch.split("_", 1)
        reference = getattr(smp, name)(encoder_name=encoder, encoder_weights=None, classes=21)
        model = getattr(torchtl.segmentation, name)(encoder_name=encoder, encoder_weights=None, classes=21)
        model.load_state_dict(reference.state_dict())
        return reference, model
    if arch.startswith("resnet"):
        tv = getattr(torchvision.models, arch)(weights=None)
        return tv, getattr(torchtl.models, arch)(weights=tv)
    tv = getattr(torchvision.models.segmentation, arch)(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    return tv, getattr(torchtl.segmentation, arch)(weights=tv, num_classes=21, aux_loss=True)


def output_tensor(out):
    return out["out"] if isinstance(out, dict) else out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def runner(model, x, train, device, bf16):
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if not train:
                with torch.no_grad():
                    return output_tensor(model(x))
            out = output_tensor(model(x))
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)
        return out.detach()
    return run


def time_once(run, device):
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def agreement(out, ref):
    out, ref = out.float(), ref.float()
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    top1 = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    return err, top1


def compare(arch, device, repeats, train, use_compile, bf16, means=False):
    batch, size = SIZES[arch]
    tv, tl = build_pair(arch)
    tv.to(device).train(train), tl.to(device).train(train)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    runs = {"torchvision": runner(tv, x, train, device, False)}
    if use_compile:
        compiled = torch.compile(tv)
        runs["compile"] = runner(compiled, x, train, device, False)
    runs["torchtl"] = runner(tl, x, train, device, False)
    if bf16:
        runs["torchtl bf16"] = runner(tl, x, train, device, True)
    if means:
        tv_cl = build_pair(arch)[0].to(device).train(train).to(memory_format=torch.channels_last)
        tv_cl.load_state_dict(tv.state_dict())
        x_cl = x.contiguous(memory_format=torch.channels_last)
        runs["tv cl"] = runner(tv_cl, x_cl, train, device, False)
        if bf16:
            runs["tv cl bf16"] = runner(tv_cl, x_cl, train, device, True)
    ref = None
    checks = {}
    for name, run in runs.items():  # warm-up (and compilation), then the outputs to compare
        start = time.perf_counter()
        run()
        if name == "compile":
            print(f"  ({arch}: torch.compile took {time.perf_counter() - start:.0f} s)", flush=True)
        out = run()
        if name == "torchvision":
            ref = out
        elif not train:
            checks[name] = agreement(out, ref)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(time_once(run, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return batch, size, med, checks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50", "deeplabv3_resnet50"], choices=list(SIZES))
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--pass", dest="passes", choices=["eval", "train"], default="eval")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile column")
    parser.add_argument("--means", action="store_true",
                        help="add torchvision's model with channels_last, and with channels_last + bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [torch.device(d) for d in devices if d == "cpu" or torch.cuda.is_available()]
    train = args.passes == "train"
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU threads, "
          f"CPU bf16: {torchtl.cpu_supports_bf16()}, load average {load:.1f}, pass: {args.passes}")
    header = f"{'model':<20} {'batch':>5} {'px':>4} {'dev':<5} {'torchvision s':>13} {'compile':>8} {'torchtl':>8} " \
             f"{'tl bf16':>8}"
    if not train:
        header += f"  {'err torchtl':>11} {'top1':>6} {'err bf16':>9} {'top1':>6}"
    if args.means:
        header += f"  {'tv cl':>8} {'cl bf16':>8}"
    print(header, flush=True)
    for device in devices:
        bf16 = device.type == "cuda" or torchtl.cpu_supports_bf16()
        for arch in args.archs:
            batch, size, med, checks = compare(arch, device, args.repeats, train, not args.no_compile, bf16,
                                               args.means)
            base = med["torchvision"]
            cell = lambda k: f"{base / med[k]:>7.2f}x" if k in med else f"{'n/a':>8}"  # noqa: E731
            line = (f"{arch:<20} {batch:>5} {size:>4} {device.type:<5} {base:>13.3f} {cell('compile')} "
                    f"{cell('torchtl')} {cell('torchtl bf16')}")
            if not train:
                for k in ("torchtl", "torchtl bf16"):
                    err, top1 = checks.get(k, (float("nan"), float("nan")))
                    line += f"  {err:>9.1e} {top1:>6.3f}" if k == "torchtl bf16" else f"  {err:>11.1e} {top1:>6.3f}"
            if args.means:
                line += f"  {cell('tv cl')} {cell('tv cl bf16')}"
            print(line, flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
