import copy
import io
import warnings

import pytest
import torch
import torchvision
from torch import nn

import torchtl
from helpers import assert_close_rel, randomize_batchnorm


@pytest.fixture(autouse=True)
def _exact_mode():
    """Parity with torchvision runs in exact mode; tests/test_fast_path.py covers the fast path."""
    with torchtl.exact_mode():
        yield


ARCHS = [name for name in torchtl.models.__all__ if name != "ResNet"]  # every builder torchtl ships


def twins(arch, **kwargs):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(weights=None, **kwargs)
    randomize_batchnorm(tv)
    m = getattr(torchtl.models, arch)(weights=tv, **kwargs)
    return tv, m


def check_parity(tv, m, x):
    assert list(m.state_dict()) == list(tv.state_dict())
    tv.eval(), m.eval()
    with torch.no_grad():
        assert_close_rel(m(x), tv(x), 1e-5, "eval output")

    tv.train(), m.train()
    out_tv, out_m = tv(x), m(x)
    assert_close_rel(out_m, out_tv, 1e-5, "train output")
    for (name, a), b in zip(m.state_dict().items(), tv.state_dict().values()):
        if "running" in name:
            assert_close_rel(a, b, 1e-5, name)
        if name.endswith("num_batches_tracked"):
            assert a.item() == b.item() == 1, name
    target = torch.randn_like(out_tv)
    ((out_tv - target) ** 2).mean().backward()
    ((out_m - target) ** 2).mean().backward()
    for (name, a), b in zip(m.named_parameters(), tv.parameters()):
        assert a.grad is not None, name
        assert_close_rel(a.grad, b.grad, 1e-4, f"grad {name}")


@pytest.mark.parametrize("arch", ARCHS)
def test_builder_matches_torchvision(arch):
    tv, m = twins(arch, num_classes=10)
    assert isinstance(m, nn.Module)
    check_parity(tv, m, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("arch,dilation", [("resnet50", [False, True, True]), ("resnext50_32x4d", [False, False, True])])
def test_dilated_backbones_match(arch, dilation):
    tv, m = twins(arch, num_classes=5, replace_stride_with_dilation=dilation)
    check_parity(tv, m, torch.randn(2, 3, 65, 97))


def test_basic_block_rejects_dilation():
    with pytest.raises(NotImplementedError, match="Dilation > 1 not supported in BasicBlock"):
        torchtl.models.resnet18(replace_stride_with_dilation=[False, False, True])
    with pytest.raises(ValueError, match="3-element"):
        torchtl.models.resnet50(replace_stride_with_dilation=[True])


def test_initialisation_scheme():
    m = torchtl.models.resnet50(zero_init_residual=True)
    for name, mod in m.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            expected = 0.0 if name.endswith("bn3") else 1.0
            assert torch.all(mod.weight == expected), name
            assert torch.all(mod.bias == 0), name
    w = m.layer1[0].conv2.weight  # 64 x 64 x 3 x 3, kaiming normal with fan_out = 64 * 9
    assert abs(w.std().item() - (2.0 / (64 * 9)) ** 0.5) < 0.005
    assert abs(w.mean().item()) < 0.005


def test_repr_reads_like_torchvision():
    tv = torchvision.models.resnet18(weights=None)
    m = torchtl.models.resnet18()
    assert repr(m) == repr(tv)


def test_parameters_are_the_cpp_tensors():
    m = torchtl.models.resnet18(num_classes=3)
    cpp_params = dict(m._cpp.named_parameters(recurse=True))
    for name, p in m.named_parameters():
        assert isinstance(p, nn.Parameter)
        assert p is cpp_params[name], name
    # An in-place edit from Python is seen by the C++ forward.
    x = torch.randn(1, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        m.fc.bias.add_(100.0)
        assert torch.all(m(x) > 50)


def test_freeze_new_head_one_step_changes_only_head():
    tv = torchvision.models.resnet18(weights=None)
    m = torchtl.models.resnet18(weights=tv)
    for p in m.parameters():
        p.requires_grad = False
    fc = nn.Linear(m.fc.in_features, 2)
    m.fc = fc
    assert m.fc is fc and m.fc.weight is fc.weight
    assert list(m.state_dict())[-2:] == ["fc.weight", "fc.bias"]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    m.eval()  # frozen backbone: BN statistics stay put too
    loss = nn.functional.cross_entropy(m(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    after = m.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["fc.weight", "fc.bias"]


def test_assigning_a_sequential_head_and_identity():
    m = torchtl.models.resnet18(num_classes=10)
    tv = torchvision.models.resnet18(num_classes=10)
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 4))
    m.fc = head
    tv.fc = copy.deepcopy(head)
    tv.load_state_dict(m.state_dict())
    assert list(m.state_dict()) == list(tv.state_dict())
    m.eval(), tv.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close_rel(m(x), tv(x), 1e-5, "sequential head")
        m.fc = nn.Identity()
        assert m(x).shape == (2, 512)


def test_assigning_a_grayscale_stem_and_bad_types():
    m = torchtl.models.resnet18(num_classes=2)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 2)
    assert m._tree.mismatch(m) is None  # the new stem runs in C++
    tv, m = torchvision.models.resnet18(num_classes=2), torchtl.models.resnet18(num_classes=2)
    for model in (tv, m):  # accepted, as torchvision accepts it; the forward fails alike
        model.bn1 = nn.Linear(3, 3)
    with pytest.raises(RuntimeError) as e_tv:
        tv(torch.randn(2, 3, 64, 64))
    with pytest.raises(RuntimeError) as e_m:
        m(torch.randn(2, 3, 64, 64))
    assert str(e_m.value) == str(e_tv.value)


def test_reset_classifier():
    m = torchtl.models.resnet34()
    m.reset_classifier(7)
    assert m.fc.out_features == 7 and m.fc.in_features == 512
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert m.to_torchvision().fc.out_features == 7


def test_train_eval_reach_cpp_per_module():
    tv, m = twins("resnet18", num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    for model in (tv, m):
        model.train()
        model.layer2.eval()  # a partially frozen backbone
    out_tv, out_m = tv(x), m(x)
    assert_close_rel(out_m, out_tv, 1e-5, "partial eval")
    assert torch.equal(m.layer2[0].bn1.num_batches_tracked, torch.tensor(0))
    assert m.layer1[0].bn1.num_batches_tracked.item() == 1


def test_to_dtype_reaches_cpp():
    tv, m = twins("resnet18", num_classes=3)
    tv.double().eval(), m.double().eval()
    assert all(b.dtype == torch.float64 for _, b in m._cpp.named_buffers(recurse=True) if b.is_floating_point())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert_close_rel(m(x), tv(x), 1e-10, "float64")


def test_deepcopy_and_pickle_round_trip():
    m = torchtl.models.resnet18(num_classes=3)
    for p in m.layer1.parameters():
        p.requires_grad_(False)
    m.fc = nn.Sequential(nn.Dropout(0.1), nn.Linear(512, 5))
    m.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = m(x)
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(m), torch.load(buffer, weights_only=False)):
        assert type(clone) is type(m) and not clone.training
        assert list(clone.state_dict()) == list(m.state_dict())
        assert [n for n, p in clone.named_parameters() if not p.requires_grad] == [
            n for n, p in m.named_parameters() if not p.requires_grad
        ]
        with torch.no_grad():
            assert torch.equal(clone(x), expected)
            clone.fc[1].bias.add_(1.0)  # the copy owns its own C++ tensors
        assert not torch.equal(clone.fc[1].bias, m.fc[1].bias)


def test_to_torchvision_twin():
    m = torchtl.models.resnet50(num_classes=6)
    twin = m.to_torchvision()
    assert isinstance(twin, torchvision.models.ResNet)
    m.eval(), twin.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close_rel(m(x), twin(x), 1e-5, "twin")


def test_bad_input_is_a_python_error():
    m = torchtl.models.resnet18()
    with pytest.raises(ValueError, match="ResNet expects an N x 3 x H x W batch"):
        m(torch.randn(3, 64, 64))


@pytest.mark.cuda
def test_cuda_forward_parity():
    tv, m = twins("resnet50", num_classes=10)
    tv.cuda().eval(), m.cuda().eval()
    assert all(p.is_cuda for _, p in m._cpp.named_buffers(recurse=True) + m._cpp.named_parameters(recurse=True))
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        assert_close_rel(m(x), tv(x), 1e-4, "cuda eval")
    tv.train(), m.train()
    out_tv, out_m = tv(x), m(x)
    assert_close_rel(out_m, out_tv, 1e-4, "cuda train")
    out_tv.sum().backward()
    out_m.sum().backward()
    assert_close_rel(m.fc.weight.grad, tv.fc.weight.grad, 1e-3, "cuda grad")
