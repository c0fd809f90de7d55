"""int8 (torchtl.quantize) against torchtl fp32 and bf16 inference, on the demo's trained ResNet-18.

    python benchmarks/quantize.py [--data data] [--sizes 48,224] [--repeats 7]

The model is the one the demo trains (torchtl.tools.demo_data.prepare: a resnet18 trained by the
C++ engine on the 6-class source task at 48 px; generated and trained on first use). For each
input size it writes an int8 package calibrated on the task's training images and reports, from
the package's parity record:

- top-1 agreement with torchtl's fp32 forward on the validation images (target >= 99%);
- speed on a batch of 8 validation images against torchtl fp32 and torchtl bf16 autocast (and
  torchvision's eager fp32), timed in turn so that load falls on all alike, as ratios (target: int8
  >= 2x torchtl fp32), with the load average (the machine is shared) at the time.

At 224 px the 48 px images are resized up: the weights are the same, the speed is that of a
full-size input.
"""
import argparse
import json
import os
import sys
import tempfile

import torch

import torchtl
from torchtl.tools import demo_data


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="the demo's data folder (generated when missing)")
    parser.add_argument("--sizes", default="48,224", help="comma-separated input sizes")
    parser.add_argument("--repeats", type=int, default=7, help="timed batches per run")
    parser.add_argument("--records", help="folder for the parity records (default: a temporary one)")
    args = parser.parse_args()
    prepared = demo_data.prepare(args.data, progress=False, log=lambda *a: print(*a, file=sys.stderr))
    source = prepared["source"]
    model = torchtl.models.resnet18(weights=prepared["weights"]).eval()
    classes = list(demo_data.SOURCE_CLASSES)
    print(f"uptime load average before: {os.getloadavg()}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.records or scratch
        os.makedirs(out_dir, exist_ok=True)
        for size in map(int, args.sizes.split(",")):
            transform = {"resize_size": size, "crop_size": size, "interpolation": "bilinear",
                         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
            record = torchtl.quantize(model, source["train"], os.path.join(out_dir, f"resnet18_int8_{size}.pt2"),
                                      check_map_file=source["val"], classes=classes, transform=transform,
                                      calibration_images=256, speed_repeats=args.repeats, min_agreement=0.0)
            real = record["checks"]["real"]
            speed = record["speed"]
            rows.append((size, record, real, speed))
            print(json.dumps({"size": size, "checks": real, "speed": speed}, indent=1), flush=True)
    print()
    print("| input | images checked | top-1 agreement with fp32 | int8 vs torchtl fp32 | int8 vs torchtl bf16 "
          "| int8 vs torchvision fp32 | load average |")
    print("|---|---|---|---|---|---|---|")
    for size, record, real, speed in rows:
        bf16 = f"{speed['package_vs_torchtl_bf16']:.2f}x" if "package_vs_torchtl_bf16" in speed else "no native bf16"
        print(f"| {size} px, batch {speed['batch']} | {record['inputs']['real'][0]} | "
              f"{real['against_torchtl']['top1_agreement']:.1%} | {speed['package_vs_torchtl']:.2f}x | {bf16} | "
              f"{speed['package_vs_torchvision']:.2f}x | {speed['load_average']:.1f} |")
    print(f"\nuptime load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
