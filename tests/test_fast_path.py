"""The fast path (channels_last, folded batch norm, bf16 autocast) against torchvision's default
execution, and exact mode, which reproduces it bit for bit."""
import copy
import threading

import pytest
import torch
import torchvision

import torchtl
from helpers import assert_close_rel, randomize_batchnorm
from test_engine import cls_map, loader  # noqa: F401  (fixture)

# The fast path's documented tolerance in fp32: relative to the largest output, as the parity
# tests measure it. Measured: about 1e-6 (resnet18/50) and 3e-6 (deeplabv3) on this CPU.
FP32_TOL = 1e-5
# Train mode normalises with the statistics of the batch (2 samples here), which amplifies the
# rounding differences of the channels_last convolutions.
TRAIN_TOL = 1e-4
# bf16 autocast keeps 8 bits of mantissa: outputs move by a few percent of their range; the
# top-1 class of a well-separated input stays.
BF16_TOL = 0.1

needs_bf16 = pytest.mark.skipif(not torchtl.cpu_supports_bf16(), reason="CPU without AVX-512 BF16 or AMX")


def classification_twins(arch="resnet18", num_classes=10):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    randomize_batchnorm(tv)
    return tv.eval(), getattr(torchtl.models, arch)(weights=tv, num_classes=num_classes).eval()


def segmentation_twins():
    torch.manual_seed(0)
    tv = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3,
                                                             aux_loss=True)
    randomize_batchnorm(tv)
    return tv.eval(), torchtl.segmentation.deeplabv3_resnet50(weights=tv, num_classes=3, aux_loss=True).eval()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_exact_mode_is_bit_exact(arch):
    tv, m = classification_twins(arch)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torchtl.exact_mode():
        assert torchtl.is_exact_mode()
        assert torch.equal(m(x), tv(x))
    assert not torchtl.is_exact_mode()
    m.train(), tv.train()
    with torchtl.exact_mode():
        assert torch.equal(m(x), tv(x))


def test_exact_mode_segmentation_is_bit_exact():
    tv, m = segmentation_twins()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad(), torchtl.exact_mode():
        out_tv, out_m = tv(x), m(x)
    for k in ("out", "aux"):
        assert torch.equal(out_m[k], out_tv[k]), k


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_fast_path_matches_within_tolerance(arch):
    tv, m = classification_twins(arch)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        out_tv, out_m = tv(x), m(x)
    assert out_m.is_contiguous()
    assert not torch.equal(out_m, out_tv)  # the fast path is taken: the rounding differs
    assert_close_rel(out_m, out_tv, FP32_TOL, "fast eval output")
    assert torch.equal(out_m.argmax(1), out_tv.argmax(1))


def test_fast_path_strays_no_further_than_torchvisions_own_channels_last():
    # torchvision's test_models.py holds TorchScript and fx outputs to the plain call's within 1e-4.
    # On a deep randomly initialised model (resnet101: outputs of about 3e4), torchvision's own
    # model moved to channels_last misses that as the fast path does, by the same amount.
    torch.manual_seed(0)
    tv = torchvision.models.resnet101().eval()
    m = torchtl.models.resnet101(weights=tv).eval()
    channels_last = copy.deepcopy(tv).to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        reference = tv(x)
        fast_error = (m(x) - reference).abs().max().item()
        layout_error = (channels_last(x.contiguous(memory_format=torch.channels_last)) - reference).abs().max().item()
    assert 0 < layout_error and fast_error <= 3 * layout_error, (fast_error, layout_error)


def test_fast_path_segmentation_outputs_contiguous_and_close():
    tv, m = segmentation_twins()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        out_tv, out_m = tv(x), m(x)
        out_cl = m(x.contiguous(memory_format=torch.channels_last))
    for k in ("out", "aux"):
        assert out_m[k].is_contiguous(), k
        assert torch.equal(out_cl[k], out_m[k]), k  # a channels_last batch takes the same path
        assert_close_rel(out_m[k], out_tv[k], FP32_TOL, f"fast eval {k}")
    agree = (out_m["out"].argmax(1) == out_tv["out"].argmax(1)).float().mean().item()
    assert agree > 0.99


def test_folded_weights_follow_every_change():
    tv, m = classification_twins("resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        m(x)  # folds
        # in-place writes (version counter), tensor rebinding (.data) and load_state_dict
        m.layer1[0].bn1.running_mean.add_(0.5)
        tv.layer1[0].bn1.running_mean.add_(0.5)
        assert_close_rel(m(x), tv(x), FP32_TOL, "after running_mean.add_")
        new = torch.randn_like(tv.conv1.weight) * 0.05
        m.conv1.weight.data = new.clone()
        tv.conv1.weight.data = new.clone()
        assert_close_rel(m(x), tv(x), FP32_TOL, "after conv1.weight.data =")
        tv.layer4[1].bn2.weight.mul_(3)
        m.load_state_dict(tv.state_dict())
        assert_close_rel(m(x), tv(x), FP32_TOL, "after load_state_dict")
    # eval mode, but autograd needs the weights: the unfolded path, gradients reach conv and bn
    out = m(x)
    out.sum().backward()
    assert m.layer1[0].conv1.weight.grad is not None and m.layer1[0].bn1.weight.grad is not None
    # training mode never folds: batch statistics, updated running stats
    m.train(), tv.train()
    assert_close_rel(m(x), tv(x), TRAIN_TOL, "train output")
    assert_close_rel(m.layer2[0].bn1.running_var, tv.layer2[0].bn1.running_var, TRAIN_TOL, "running_var")


def test_cpu_eval_runs_onednn_fused_convolutions_for_any_input_shape():
    tv, m = classification_twins("resnet18")
    with torch.no_grad():
        with torch.profiler.profile() as prof:
            m(torch.randn(2, 3, 64, 64))
        fused = [e for e in prof.key_averages() if e.key == "mkldnn::_convolution_pointwise"]
        assert fused and fused[0].count == 20  # every conv of resnet18, ReLU fused where one follows
        # each new input shape gets its own weight layout; results stay torchvision's
        for shape in [(3, 3, 64, 64), (1, 3, 96, 80), (2, 3, 64, 64)]:
            x = torch.randn(shape)
            assert_close_rel(m(x), tv(x), FP32_TOL, f"input {shape}")
        # with oneDNN switched off by the user, ATen's conv2d runs the folded convolutions
        with torch.backends.mkldnn.flags(enabled=False):
            x = torch.randn(2, 3, 64, 64)
            assert_close_rel(m(x), tv(x), FP32_TOL, "oneDNN off")


def test_segmentation_eval_folds_stem_and_heads():
    torch.manual_seed(0)
    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True)
    randomize_batchnorm(tv)
    tv.eval()
    m = torchtl.segmentation.fcn_resnet50(weights=tv, num_classes=3, aux_loss=True).eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        with torch.profiler.profile() as prof:
            out = m(x)
        expected = tv(x)
    ran = {e.key: e.count for e in prof.key_averages()}
    # the backbone's stem (conv1, bn1, relu run by IntermediateLayerGetter) and both heads'
    # Conv2d + BatchNorm2d + ReLU (Sequentials) fold like the blocks: no batch norm runs at all
    assert "aten::native_batch_norm" not in ran and "aten::batch_norm" not in ran
    assert ran["mkldnn::_convolution_pointwise"] == 53 + 2
    for k in ("out", "aux"):
        assert_close_rel(out[k], expected[k], FP32_TOL, f"fcn {k}")


def test_exact_mode_is_per_thread():
    seen = []
    with torchtl.exact_mode():
        t = threading.Thread(target=lambda: seen.append(torchtl.is_exact_mode()))
        t.start()
        t.join()
        assert torchtl.is_exact_mode()
    assert seen == [False]


@needs_bf16
def test_bf16_autocast_reaches_the_cpp_forward():
    tv, m = classification_twins("resnet50")
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = tv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
    assert out.dtype == torch.bfloat16  # as torchvision's under the same autocast
    assert_close_rel(out.float(), expected, BF16_TOL, "bf16 eval output")
    assert torch.equal(out.float().argmax(1), expected.argmax(1))


@needs_bf16
def test_alternating_fp32_and_bf16_calls_keep_both_folded_weights():
    """Each compute dtype keeps its folded, reordered weights: calls that alternate between fp32 and
    bf16 autocast reorder nothing after the first of each."""
    tv, m = classification_twins("resnet18")
    x = torch.randn(2, 3, 64, 64)

    def reorders(bf16):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.profiler.profile() as prof:
                out = m(x)
        counts = {e.key: e.count for e in prof.key_averages()}
        return counts.get("mkldnn::_reorder_convolution_weight", 0), out

    assert reorders(False)[0] == 20 and reorders(True)[0] == 20  # the first call of each dtype
    for bf16 in (False, True, False, True):
        count, out = reorders(bf16)
        assert count == 0, f"bf16={bf16}: {count} weights reordered again"
    with torch.no_grad():
        assert_close_rel(reorders(False)[1], tv(x), FP32_TOL, "fp32 after bf16")


def test_engine_amp_on_the_cpu(cls_map):  # noqa: F811
    m = torchtl.models.resnet18(num_classes=2)
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
        torchtl.engine.fit(m, loader(cls_map), epochs=1, device="cpu", amp="fp16", progress=False)
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
        torchtl.reference.fit(m.to_torchvision(), loader(cls_map), epochs=1, device="cpu", amp="fp16",
                              progress=False)
    if not torchtl.cpu_supports_bf16():
        with pytest.raises(ValueError, match="AVX-512 BF16 or AMX"):
            torchtl.engine.fit(m, loader(cls_map), epochs=1, device="cpu", amp="bf16", progress=False)
        return
    tv = m.to_torchvision()
    kw = dict(optimizer="sgd", lr=0.002, momentum=0.9, epochs=2, device="cpu", amp="bf16", progress=False)
    cpp = torchtl.engine.fit(m, loader(cls_map), loader(cls_map, shuffle=False), **kw)
    py = torchtl.reference.fit(tv, loader(cls_map), loader(cls_map, shuffle=False), **kw)
    a = torch.tensor([s for e in cpp["epochs"] for s in e["step_losses"]])
    b = torch.tensor([s for e in py["epochs"] for s in e["step_losses"]])
    assert torch.isfinite(a).all()
    assert torch.allclose(a, b, rtol=0.05), (a, b)  # the same bf16 kernels; the C++ path folds no BN in training
    # evaluation folds batch norm in C++ (not in the twin): close, not equal, in bf16
    assert cpp["epochs"][-1]["val"]["loss"] == pytest.approx(py["epochs"][-1]["val"]["loss"], rel=0.1)
    # the run's channels_last weights are handed back in the user's layout, in fp32
    assert all(p.is_contiguous() and p.dtype == torch.float32 for p in m.parameters())


def test_engine_exact_mode_equals_the_python_twin(cls_map):  # noqa: F811
    m = torchtl.models.resnet18(num_classes=2)
    tv = m.to_torchvision()
    kw = dict(optimizer="sgd", lr=0.002, momentum=0.9, epochs=2, device="cpu", channels_last=False, progress=False)
    cpp = torchtl.engine.fit(m, loader(cls_map), loader(cls_map, shuffle=False), **kw)
    py = torchtl.reference.fit(tv, loader(cls_map), loader(cls_map, shuffle=False), **kw)
    assert [e["step_losses"] for e in cpp["epochs"]] == [e["step_losses"] for e in py["epochs"]]
    assert cpp["epochs"][-1]["val"]["loss"] == py["epochs"][-1]["val"]["loss"]
    for a, b in zip(m.state_dict().values(), tv.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_fast_path_and_amp():
    tv, m = classification_twins("resnet18")
    tv.cuda(), m.cuda()
    x = torch.randn(4, 3, 64, 64, device="cuda")
    with torch.no_grad():
        out_tv, out_m = tv(x), m(x)
        assert_close_rel(out_m, out_tv, 1e-3, "cuda fast eval")  # TF32 may be on for cuDNN
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast("cuda", dtype=dtype):
                out = m(x)
            assert out.dtype == dtype
            assert_close_rel(out.float(), out_tv, BF16_TOL, f"cuda {dtype} eval")
        with torchtl.exact_mode():
            assert_close_rel(m(x), out_tv, 1e-4, "cuda exact eval")


@pytest.mark.cuda
def test_cuda_engine_bf16_default_channels_last(cls_map):  # noqa: F811
    m = torchtl.models.resnet18(num_classes=2)
    h = torchtl.engine.fit(m, loader(cls_map), loader(cls_map, shuffle=False), epochs=2, device="cuda", amp="bf16",
                           progress=False)
    assert torch.isfinite(torch.tensor([s for e in h["epochs"] for s in e["step_losses"]])).all()
    assert all(p.is_cuda and p.is_contiguous() for p in m.parameters())
