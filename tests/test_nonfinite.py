"""NaN and infinity in, NaN and infinity out, as in torchvision, on every path: exact mode, the
fast path (folded batch norm, oneDNN's convolution with its fused ReLU, which by itself maps NaN to
0), bf16 autocast, blocks called on their own, and the C++ loops' evaluation."""
import contextlib

import pytest
import torch
import torchvision

import torchtl
from helpers import randomize_batchnorm

PATHS = ["exact", "fast"] + (["bf16"] if torchtl.cpu_supports_bf16() else [])


def _path(name):
    if name == "exact":
        return torchtl.exact_mode()
    if name == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


CASES = ["all_nan", "nan_pixel", "inf_pixel", "neg_inf_pixel"]


def _inputs(h=36, w=32):
    """One batch: sample i holds CASES[i]'s non-finite values, the last sample is clean (in eval
    mode the samples of a batch do not meet, so one call tests every case)."""
    x = torch.randn(len(CASES) + 1, 3, h, w)
    x[0] = float("nan")
    for i, value in ((1, float("nan")), (2, float("inf")), (3, -float("inf"))):
        x[i, 1, h // 2, w // 3] = value
    return x


def _twins(family):
    torch.manual_seed(0)
    if family in ("fcn_resnet50", "deeplabv3_resnet50"):
        tv = getattr(torchvision.models.segmentation, family)(weights=None, weights_backbone=None, num_classes=3)
        randomize_batchnorm(tv)
        return tv.eval(), getattr(torchtl.segmentation, family)(weights=tv, num_classes=3).eval()
    tv = getattr(torchvision.models, family)(weights=None, num_classes=5)
    randomize_batchnorm(tv)
    return tv.eval(), getattr(torchtl.models, family)(weights=tv, num_classes=5).eval()


@pytest.fixture(scope="module", params=["resnet18", "resnext50_32x4d", "fcn_resnet50", "deeplabv3_resnet50"])
def twins(request):
    return _twins(request.param)


@pytest.fixture(scope="module")
def resnet18_twins():
    return _twins("resnet18")


def _out(y):
    return y["out"] if isinstance(y, dict) else y


@pytest.mark.parametrize("path", PATHS)
def test_non_finite_inputs_give_torchvision_non_finite_outputs(twins, path):
    tv, m = twins
    x = _inputs()
    with torch.no_grad(), _path(path):
        expected, got = _out(tv(x)), _out(m(x))
    for i, case in enumerate(CASES):
        assert not torch.isfinite(expected[i]).all(), f"{case}: torchvision gives finite outputs; the case tests nothing"
        assert torch.equal(torch.isfinite(got[i]), torch.isfinite(expected[i])), f"{path}/{case}: non-finite outputs differ"
        assert torch.equal(torch.isnan(got[i]), torch.isnan(expected[i])), f"{path}/{case}: NaN outputs differ"
    # The clean sample of the same batch is untouched by the fall-back.
    assert torch.isfinite(got[-1]).all()


@pytest.mark.parametrize("path", PATHS)
def test_block_called_on_its_own_propagates_nan(resnet18_twins, path):
    tv, m = resnet18_twins
    x = torch.randn(2, 64, 16, 16)
    x[0, :, 3, 4] = float("nan")
    with torch.no_grad(), _path(path):
        for name in ("layer1", "layer2"):
            expected, got = getattr(tv, name)(x), getattr(m, name)(x)
            assert not torch.isfinite(expected).all()
            assert torch.equal(torch.isnan(got), torch.isnan(expected)), name
            x = expected.float()


@pytest.mark.parametrize("amp", [None] + (["bf16"] if torchtl.cpu_supports_bf16() else []))
def test_cpp_evaluation_of_nan_batch_gives_nan_loss(resnet18_twins, amp):
    tv, m = resnet18_twins
    x = _inputs(32, 32)[:2]
    targets = torch.tensor([1, 2])
    result = torchtl.engine.evaluate(m, [(x, targets)], device="cpu", amp=amp)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(tv(x), targets)
    assert torch.isnan(expected)
    assert torch.isnan(torch.tensor(result["loss"])), result
