"""One rank of tests/test_distributed.py, launched by torchrun: trains with an unchanged
``torchtl.engine.fit`` (which joins torch.distributed from torchrun's environment) and saves what
this rank ended with under ``--out`` as ``rank<R>.pt`` for the test to compare."""
import argparse
import os

import torch

import torchtl
from torchtl import data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--checkpoint-dir", required=True, help="may name {rank}")
    p.add_argument("--resume", default=None)
    p.add_argument("--engine", choices=["torchtl", "reference"], default="torchtl")
    args = p.parse_args()

    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=2)
    transform = data.classification_transform(train=False, size=32, resize_size=32)
    train = data.DataLoader(data.MapDataset(args.train, transform=transform), batch_size=args.batch_size,
                            shuffle=True, num_workers=1, seed=0)
    val = data.DataLoader(data.MapDataset(args.val, transform=transform), batch_size=3, num_workers=1)
    engine = torchtl.engine if args.engine == "torchtl" else torchtl.reference
    checkpoint_dir = args.checkpoint_dir.format(rank=os.environ["RANK"])
    history = engine.fit(model, train, val, mode="feature_extractor", optimizer="sgd", lr=0.05, momentum=0.9,
                         epochs=args.epochs, device="cpu", checkpoint_dir=checkpoint_dir, resume=args.resume,
                         progress=False)
    evaluated = engine.evaluate(model, val, device="cpu")
    rank = torch.distributed.get_rank()
    torch.save({"state_dict": model.state_dict(), "history": history, "evaluate": evaluated,
                "world_size": torch.distributed.get_world_size()}, os.path.join(args.out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
