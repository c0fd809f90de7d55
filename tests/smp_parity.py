"""torchtl's segmentation_models architectures against segmentation_models_pytorch itself.

Imported by tests/test_segmentation_models.py; run as a script it prints the parity table for every
architecture and encoder (slow: the large encoders take minutes on two cores):

    PYTHONPATH=. python tests/smp_parity.py [--encoders resnet18,resnet34] [--archs Unet,FPN]
"""
from __future__ import annotations

import copy

import torch

import torchtl
from helpers import randomize_batchnorm, rel_err

# Per architecture: the smallest input the table and tests use (PAN needs 128 px; output stride 32
# needs multiples of 32) and extra arguments that keep the decoder small on the test's encoders.
INPUT_SIZE = {"Unet": 64, "UnetPlusPlus": 64, "FPN": 64, "Linknet": 64, "PSPNet": 64, "DeepLabV3Plus": 64, "PAN": 128}


def build_pair(smp, arch: str, encoder: str, **kwargs):
    """smp's model and torchtl's, each built right after torch.manual_seed(0)."""
    kwargs = dict(dict(encoder_name=encoder, encoder_weights=None, classes=3), **kwargs)
    torch.manual_seed(0)
    reference = getattr(smp, arch)(**kwargs)
    torch.manual_seed(0)
    model = getattr(torchtl.segmentation, arch)(**kwargs)
    return reference, model


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


def _loss(out):
    return sum(o.square().mean() for o in _outputs(out))


def parity(smp, arch: str, encoder: str, size: int | None = None, check_train: bool = True, **kwargs) -> dict:
    """keys, seeded, eval/train bit equality (exact mode) and the fast path's error vs channels_last's."""
    reference, model = build_pair(smp, arch, encoder, **kwargs)
    ref_state, state = reference.state_dict(), model.state_dict()
    result = {
        "keys": list(state) == list(ref_state) and all(state[k].shape == ref_state[k].shape for k in ref_state),
        "seeded": list(state) == list(ref_state) and all(torch.equal(state[k], ref_state[k]) for k in ref_state),
    }
    randomize_batchnorm(reference)
    model.load_state_dict(reference.state_dict())
    size = size or INPUT_SIZE[arch]
    torch.manual_seed(1)
    x = torch.randn(2, kwargs.get("in_channels", 3), size, size)

    reference.eval(), model.eval()
    with torch.no_grad():
        expected = _outputs(reference(x))
        with torchtl.exact_mode():
            exact = _outputs(model(x))
        fast = _outputs(model(x))
        channels_last = copy.deepcopy(reference).to(memory_format=torch.channels_last)
        layout = _outputs(channels_last(x.contiguous(memory_format=torch.channels_last)))
    result["eval_equal"] = all(torch.equal(a, b) for a, b in zip(exact, expected))
    result["fast_error"] = max(rel_err(a, b) for a, b in zip(fast, expected))
    result["channels_last_error"] = max(rel_err(a, b) for a, b in zip(layout, expected))

    if check_train:
        reference.train(), model.train()
        torch.manual_seed(2)
        out_ref = reference(x)
        with torchtl.exact_mode():
            torch.manual_seed(2)  # the same dropout masks
            out = model(x)
            _loss(out).backward()
        _loss(out_ref).backward()
        grads = [(p.grad, q.grad) for p, q in zip(model.parameters(), reference.parameters())]
        stats_ref, stats = reference.state_dict(), model.state_dict()
        result["train_equal"] = (
            all(torch.equal(a, b) for a, b in zip(_outputs(out), _outputs(out_ref)))
            # layers beyond encoder_depth get no gradient, in smp as here
            and all((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
                    for a, b in grads)
            and any(a is not None for a, _ in grads)
            and all(torch.equal(stats[k], stats_ref[k]) for k in stats_ref))
    return result


def fast_path_ok(r: dict) -> bool:
    """The documented tolerance: no further from smp than smp's own model in channels_last (3x)."""
    return r["fast_error"] <= max(3 * r["channels_last_error"], 1e-5)


def main():
    import argparse

    import segmentation_models_pytorch as smp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(a for a in INPUT_SIZE if hasattr(torchtl.segmentation, a)))
    parser.add_argument("--encoders", default="resnet18,resnet34,resnet50,resnet101,resnet152,resnext50_32x4d,"
                                              "resnext101_32x8d")
    parser.add_argument("--no-train", action="store_true", help="eval-mode checks only (faster)")
    args = parser.parse_args()
    print("| architecture | encoder | keys equal | seeded init | exact eval | exact train | fast-path err "
          "| channels_last err | fast path ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        for encoder in args.encoders.split(","):
            r = parity(smp, arch, encoder, check_train=not args.no_train)
            train = "-" if args.no_train else r["train_equal"]
            print(f"| {arch} | {encoder} | {r['keys']} | {r['seeded']} | {r['eval_equal']} | {train} "
                  f"| {r['fast_error']:.2e} | {r['channels_last_error']:.2e} | {fast_path_ok(r)} |", flush=True)


if __name__ == "__main__":
    main()
