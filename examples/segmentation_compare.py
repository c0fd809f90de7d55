"""Semantic segmentation, C++ engine vs Python twin: fcn_resnet50 (or deeplabv3_resnet50) at a
small input size, mIoU and pixel accuracy, plus overlays of the predicted masks.

Without arguments it runs on the demo's generated VOC-layout shapes (4 classes, 64 px). On PASCAL
VOC (``torchtl make-map VOCdevkit/VOC2012 voc_train.txt --split train``, same for ``val``)::

    python examples/segmentation_compare.py --train voc_train.txt --val voc_val.txt --num-classes 21 \\
        --arch deeplabv3_resnet50 --size 320 --epochs 10 --device cuda
"""
import argparse
import os

import torchtl
from torchtl.tools import compare, demo_data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", help="map file or VOC root (default: the demo's shapes)")
    p.add_argument("--val", help="map file or VOC root")
    p.add_argument("--num-classes", type=int, help="default: 4 on the demo data; 21 for VOC")
    p.add_argument("--arch", default="fcn_resnet50", choices=("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50",
                                                               "deeplabv3_resnet101"))
    p.add_argument("--weights-backbone", help="ResNet classification weights for the backbone (archive/state dict)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="base size (eval: shorter side) and train crop size")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--aux-loss", action="store_true")
    p.add_argument("--device", default=torchtl.engine.default_device())
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default=os.path.join("reports", "segmentation"))
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if (args.train is None) != (args.val is None):
        p.error("give both --train and --val, or neither for the demo data")
    if args.train is None:
        maps = demo_data.make_segmentation_set(os.path.join(args.data_root, "shapes_voc"), size=args.size,
                                               seed=args.seed)
        args.train, args.val = maps["train"], maps["val"]
        args.num_classes = args.num_classes or len(demo_data.SEGMENTATION_CLASSES)
    if not args.num_classes:
        p.error("--num-classes is needed with real data (21 for PASCAL VOC)")
    report = compare.compare_segmentation(
        args.train, args.val, args.out, arch=args.arch, num_classes=args.num_classes,
        weights_backbone=args.weights_backbone, epochs=args.epochs, batch_size=args.batch_size, size=args.size,
        lr=args.lr, aux_loss=args.aux_loss, device=args.device, seed=args.seed, workers=args.workers,
        progress=args.progress)
    print(report["table"])
    print(f"report: {os.path.join(args.out, 'report.md')}")
    return report


if __name__ == "__main__":
    main()
