"""One rank of tests/test_distributed.py, launched by torchrun: trains with an unchanged
``torchtl.engine.fit`` (which joins torch.distributed from torchrun's environment) and saves what
this rank ended with under ``--out`` as ``rank<R>.pt`` for the test to compare."""
import argparse
import os

import torch

import torchtl
from torchtl import data


def build(task, train_map, val_map, batch_size, size=32):
    """The model and loaders of a run, the same in every rank and in the single process it is compared with."""
    torch.manual_seed(0)
    if task == "segmentation":
        model = torchtl.segmentation.fcn_resnet50(num_classes=3)
        # Two ranks draw other dropout masks than one process with their whole batch does.
        model.classifier[3] = torch.nn.Identity()
        transform = data.segmentation_transform(train=False, base_size=size, crop_size=size)
        dataset = data.SegmentationMapDataset
    else:
        model = torchtl.models.resnet18(num_classes=2)
        transform = data.classification_transform(train=False, size=size, resize_size=size)
        dataset = data.MapDataset
    train = data.DataLoader(dataset(train_map, transform=transform), batch_size=batch_size, shuffle=True,
                            num_workers=1, seed=0)
    val = data.DataLoader(dataset(val_map, transform=transform), batch_size=3, num_workers=1)
    return model, train, val


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
    p.add_argument("--task", choices=["classification", "segmentation"], default="classification")
    p.add_argument("--mode", default="feature_extractor")
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--size", type=int, default=32, help="image size")
    p.add_argument("--device", default="cpu", help="cuda: each rank on the GPU its LOCAL_RANK names, over nccl")
    args = p.parse_args()

    model, train, val = build(args.task, args.train, args.val, args.batch_size, args.size)
    engine = torchtl.engine if args.engine == "torchtl" else torchtl.reference
    checkpoint_dir = args.checkpoint_dir.format(rank=os.environ["RANK"])
    history = engine.fit(model, train, val, task=args.task, mode=args.mode, optimizer="sgd", lr=args.lr, momentum=0.9,
                         epochs=args.epochs, device=args.device, checkpoint_dir=checkpoint_dir, resume=args.resume,
                         sync_bn=args.sync_bn, progress=False)
    evaluated = engine.evaluate(model, val, task=args.task, device=args.device)
    rank = torch.distributed.get_rank()
    torch.save({"state_dict": model.state_dict(), "history": history, "evaluate": evaluated,
                "world_size": torch.distributed.get_world_size()}, os.path.join(args.out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
