"""Exports every torchtl builder to an AOTInductor package and prints each parity record.

    python benchmarks/export_parity.py [--size 64] [--out export_parity] [--only resnet18,fcn_resnet50]

Each builder (random weights, seed 0; 10 classes, or 5 for segmentation) goes through
``torchtl.export``; a builder whose package strays past the tolerance is listed as refused with
the gap, and the script goes on. An AOTInductor compile takes about a minute per model on 2 cores,
so the whole list takes a while. Writes ``<out>/<builder>.parity.json`` (and the ``.pt2`` with --keep-packages)
and prints one line per builder and reference, and the speed ratios.
"""
import argparse
import json
import os
import sys
import time
import warnings

import torch

import torchtl
from torchtl import pt2


def builders():
    return [(name, getattr(torchtl.models, name)) for name in torchtl.models.__all__ if name[0].islower()] + \
        [(name, getattr(torchtl.segmentation, name)) for name in torchtl.segmentation.__all__]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", default="export_parity")
    parser.add_argument("--only", help="comma-separated builder names")
    parser.add_argument("--keep-packages", action="store_true",
                        help="keep each .pt2 (47 MB for resnet18 up to ~500 MB for wide_resnet101_2); default: "
                             "only the parity records stay")
    args = parser.parse_args()
    chosen = [(n, b) for n, b in builders() if not args.only or n in args.only.split(",")]
    os.makedirs(args.out, exist_ok=True)
    summary = {}
    for name, build in chosen:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build(num_classes=5 if name.startswith(("fcn", "deeplabv3")) else 10)
        path = os.path.join(args.out, f"{name}.pt2")
        start = time.perf_counter()
        try:
            record = torchtl.export(model, path, example_size=args.size, speed_repeats=3)
        except pt2.ExportParityError as e:
            print(f"{name}: REFUSED: {e}", flush=True)
            with open(os.path.join(args.out, f"{name}.parity.json")) as f:
                summary[name] = json.load(f)
            continue
        except Exception as e:  # noqa: BLE001  (a builder that does not compile is reported, the others still run)
            print(f"{name}: FAILED to export: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  flush=True)
            summary[name] = {"failed": f"{type(e).__name__}: {e}"}
            continue
        seconds = time.perf_counter() - start
        if not args.keep_packages:
            os.remove(path)
        d = record["checks"]["random"]
        speed = record["speed"]
        agreement = "top1" if record["task"] == "classification" else "mask"
        print(f"{name}: accepted in {seconds:.0f} s; relative error vs torchtl "
              f"{d['against_torchtl']['relative_error']:.2e}, vs torchvision {d['against_torchvision']['relative_error']:.2e}; "
              f"{agreement} agreement {d['against_torchtl'][agreement + '_agreement']:.1%} / "
              f"{d['against_torchvision'][agreement + '_agreement']:.1%}; package speed x{speed['package_vs_torchtl']:.2f} "
              f"torchtl, x{speed['package_vs_torchvision']:.2f} torchvision (batch {speed['batch']}, "
              f"load {speed['load_average']:.1f})", flush=True)
        summary[name] = record
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    refused = [n for n, r in summary.items() if not r.get("accepted")]
    print(f"{len(summary) - len(refused)} of {len(summary)} builders exported; refused or failed: "
          f"{', '.join(refused) or 'none'}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
