"""The transfer-learning experiment (scratch, finetune, feature_extractor), C++ engine vs Python twin.

Three scenarios on the same target data, each trained by torchtl.engine (C++) and by
torchtl.reference (plain PyTorch on the torchvision twin), from the same weights with the same seed:

- scratch: random initialisation, every layer trains;
- finetune: the pretrained archive, every layer trains, new head;
- feature_extractor: the pretrained archive frozen, only the new head trains.

Without arguments it runs on the demo's generated shapes (made and cached under data/) and the
ResNet-18 pretrained on them. On real data (e.g. hymenoptera_data, after
``torchtl make-map hymenoptera_data/train train.txt`` or by passing the folders directly)::

    python examples/transfer_learning_compare.py --train hymenoptera_data/train --val hymenoptera_data/val \\
        --weights resnet18_Python.pt --size 224 --epochs 10 --device cuda
"""
import argparse
import os

import torchtl
from torchtl.tools import compare, demo_data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", help="map file or ImageFolder root (default: the demo's target task)")
    p.add_argument("--val", help="map file or ImageFolder root")
    p.add_argument("--weights", help="pretrained archive / state dict (default: the demo's pretrained ResNet-18)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--device", default=torchtl.engine.default_device())
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default="data", help="where the demo data is generated and cached")
    p.add_argument("--out", default=os.path.join("reports", "transfer_learning"))
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    if (args.train is None) != (args.val is None):
        p.error("give both --train and --val, or neither for the demo data")
    if args.train is None:
        prepared = demo_data.prepare(args.data_root, size=args.size, seed=args.seed, device=args.device,
                                     progress=args.progress)
        args.train, args.val = prepared["target"]["train"], prepared["target"]["val"]
        args.weights = args.weights or prepared["weights"]
    report = compare.compare_classification(
        args.train, args.val, args.out, weights=args.weights, arch=args.arch, epochs=args.epochs,
        batch_size=args.batch_size, size=args.size, lr=args.lr, device=args.device, seed=args.seed,
        workers=args.workers, progress=args.progress)
    print(report["table"])
    print(f"report: {os.path.join(args.out, 'report.md')}")
    return report


if __name__ == "__main__":
    main()
