"""The demo (``make demo``): the seeds' experiments on generated data, C++ engine vs Python twin.

1. Generates (or reuses, under data/) textured shapes: a source task, a target task with few images
   per class, and a VOC-layout segmentation set; pretrains a ResNet-18 on the source task with the
   C++ engine and exports it as a traced archive (the seeds' weight format).
2. Transfer learning on the target task: scratch / finetune / feature_extractor, C++ vs Python.
3. Segmentation: fcn_resnet50 at 48 px, C++ vs Python, with mask overlays.

Ends by printing the tables and the report folder. Measured: under 8 minutes on 2 shared CPU cores,
about 4 once data/ is cached (README).
"""
import argparse
import os
import time

import torchtl
from torchtl import compare, demo_data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=torchtl.engine.default_device())
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default=os.path.join("reports", "demo"))
    p.add_argument("--epochs", type=int, default=10, help="transfer-learning epochs")
    p.add_argument("--seg-epochs", type=int, default=5, help="segmentation epochs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    start = time.perf_counter()
    print(f"[1/3] data and pretrained weights under {args.data_root}/ (generated once, then cached)")
    prepared = demo_data.prepare(args.data_root, seed=args.seed, device=args.device, progress=False)
    prep_seconds = time.perf_counter() - start

    print("[2/3] transfer learning: scratch / finetune / feature_extractor, C++ engine and Python twin")
    t = time.perf_counter()
    cls = compare.compare_classification(
        prepared["target"]["train"], prepared["target"]["val"], os.path.join(args.out, "transfer_learning"),
        weights=prepared["weights"], epochs=args.epochs, batch_size=8, size=48,
        lr=dict(scratch=0.01, finetune=0.002, feature_extractor=0.01), device=args.device,
        seed=args.seed)
    cls_seconds = time.perf_counter() - t

    print("[3/3] segmentation: fcn_resnet50 at 48 px, C++ engine and Python twin")
    t = time.perf_counter()
    seg = compare.compare_segmentation(
        prepared["segmentation"]["train"], prepared["segmentation"]["val"], os.path.join(args.out, "segmentation"),
        arch="fcn_resnet50", num_classes=len(demo_data.SEGMENTATION_CLASSES), epochs=args.seg_epochs, batch_size=4,
        size=48, device=args.device, seed=args.seed)
    seg_seconds = time.perf_counter() - t
    total = time.perf_counter() - start

    timing = (f"demo time on {args.device} ({os.cpu_count()} cores visible): {total:.0f} s in all = data + pretraining "
              f"{prep_seconds:.0f} s (cached under {args.data_root}/ for later runs), transfer learning {cls_seconds:.0f} s, "
              f"segmentation {seg_seconds:.0f} s")
    summary = ["# torchtl demo: C++ engine vs Python twin", "",
               f"Target task: {len(demo_data.TARGET_CLASSES)} classes ({', '.join(demo_data.TARGET_CLASSES)}), "
               "8 training images per class, 48 px; pretrained start: ResNet-18 trained on "
               f"{len(demo_data.SOURCE_CLASSES)} other shape classes.", "",
               "## Transfer learning", "", cls["table"], "",
               "## Segmentation", "", seg["table"], "",
               f"Details, curves and overlays: [transfer_learning/report.md](transfer_learning/report.md), "
               "[segmentation/report.md](segmentation/report.md).", "", timing]
    os.makedirs(args.out, exist_ok=True)
    report_path = os.path.join(args.out, "report.md")
    with open(report_path, "w") as f:
        f.write("\n".join(summary) + "\n")

    print()
    print("Transfer learning (val accuracy after training; time = wall time of fit):")
    print(cls["table"])
    print()
    print("Segmentation:")
    print(seg["table"])
    print()
    print(timing)
    print(f"report: {report_path}")


if __name__ == "__main__":
    main()
