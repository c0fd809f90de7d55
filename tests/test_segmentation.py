import copy
import io

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


BUILDERS = ["fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101"]


def twins(name, num_classes=3, aux_loss=True):
    torch.manual_seed(0)
    tv = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                        num_classes=num_classes, aux_loss=aux_loss)
    randomize_batchnorm(tv)
    m = getattr(torchtl.segmentation, name)(weights=tv, num_classes=num_classes, aux_loss=aux_loss)
    return tv, m


CASES = [(name, True) for name in BUILDERS] + [("fcn_resnet50", False), ("deeplabv3_resnet50", False)]


@pytest.mark.parametrize("name,aux_loss", CASES)
def test_matches_torchvision(name, aux_loss):
    tv, m = twins(name, aux_loss=aux_loss)
    assert list(m.state_dict()) == list(tv.state_dict())
    keys = ["out", "aux"] if aux_loss else ["out"]
    x = torch.randn(2, 3, 65, 97)
    tv.eval(), m.eval()
    with torch.no_grad():
        out_tv, out_m = tv(x), m(x)
    assert list(out_m) == keys
    for k in keys:
        assert out_m[k].shape == (2, 3, 65, 97)
        assert_close_rel(out_m[k], out_tv[k], 1e-5, f"eval {k}")

    tv.train(), m.train()
    torch.manual_seed(1)
    out_tv = tv(x)
    torch.manual_seed(1)  # the same dropout masks
    out_m = m(x)
    for k in keys:
        assert_close_rel(out_m[k], out_tv[k], 1e-5, f"train {k}")
    sum(o.square().mean() for o in out_tv.values()).backward()
    sum(o.square().mean() for o in out_m.values()).backward()
    for (pname, a), b in zip(m.named_parameters(), tv.parameters()):
        assert a.grad is not None, pname
        assert_close_rel(a.grad, b.grad, 1e-4, f"grad {pname}")


def test_user_example_and_module_access():
    m = torchtl.segmentation.deeplabv3_resnet50(num_classes=21)
    assert m.aux_classifier is None  # as on torchvision's model
    assert "aux_classifier.0.weight" not in m.state_dict()
    out = m.eval()(torch.randn(1, 3, 33, 47))
    assert list(out) == ["out"] and out["out"].shape == (1, 21, 33, 47)
    m = torchtl.segmentation.deeplabv3_resnet50(num_classes=21, aux_loss=True)
    assert isinstance(m.backbone.layer4, nn.Sequential)
    assert isinstance(m.classifier[0].convs[1][0], nn.Conv2d)
    assert m.classifier[0].convs[1][0].dilation == (12, 12)
    feats = m.backbone(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["aux", "out"]  # layer order, as torchvision's IntermediateLayerGetter
    assert feats["out"].shape[1] == 2048 and feats["aux"].shape[1] == 1024
    assert "DeepLabHead(" in repr(m) and "ASPPPooling(" in repr(m)


def test_backbone_from_resnet_state_dict_and_traced_archive(tmp_path):
    torch.manual_seed(3)
    resnet = torchvision.models.resnet50(weights=None)
    randomize_batchnorm(resnet)
    torch.jit.trace(resnet.eval(), torch.randn(1, 3, 64, 64)).save(str(tmp_path / "resnet50_Python.pt"))
    for source in (resnet.state_dict(), str(tmp_path / "resnet50_Python.pt")):
        m = torchtl.segmentation.fcn_resnet50(num_classes=3, weights_backbone=source)
        sd = resnet.state_dict()
        for k, v in m.backbone.state_dict().items():
            assert torch.equal(v, sd[k]), k
    with pytest.raises(torchtl.WeightsMismatchError, match=r"weights_backbone: Error\(s\) in loading weights into IntermediateLayerGetter:\n  198 missing keys: layer1.0.conv3.weight, .*, \.\.\. \(178 more\)"):
        torchtl.segmentation.fcn_resnet50(weights_backbone=torchvision.models.resnet18().state_dict())


def test_other_num_classes_reinitialises_last_layers():
    tv, _ = twins("fcn_resnet50", num_classes=21)
    with pytest.warns(UserWarning, match="classifier.4.weight, classifier.4.bias, aux_classifier.4.weight"):
        m = torchtl.segmentation.fcn_resnet50(num_classes=5, weights=tv)
    assert m.classifier[4].out_channels == 5 and m.aux_classifier[4].out_channels == 5
    sd = tv.state_dict()
    assert torch.equal(m.state_dict()["classifier.0.weight"], sd["classifier.0.weight"])


def test_replace_last_layer_like_torchvision_finetuning():
    tv, m = twins("deeplabv3_resnet50", num_classes=21)
    new = nn.Conv2d(256, 4, kernel_size=1)
    m.classifier[4] = new
    tv.classifier[4] = copy.deepcopy(new)
    tv.aux_classifier[4] = nn.Conv2d(256, 4, 1)
    m.aux_classifier[4] = copy.deepcopy(tv.aux_classifier[4])
    assert m.classifier[4] is new
    x = torch.randn(1, 3, 64, 64)
    tv.eval(), m.eval()
    with torch.no_grad():
        assert_close_rel(m(x)["out"], tv(x)["out"], 1e-5, "replaced head")
        assert m(x)["aux"].shape[1] == 4
    clone = copy.deepcopy(m)
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        for other in (clone, loaded):
            assert torch.equal(other(x)["out"], m(x)["out"])
    twin = m.to_torchvision().eval()
    with torch.no_grad():
        assert_close_rel(twin(x)["out"], m(x)["out"], 1e-5, "twin")


def test_mismatch_errors_are_named():
    tv, _ = twins("fcn_resnet50", num_classes=3, aux_loss=False)
    state = tv.state_dict()
    del state["classifier.1.running_var"]
    with pytest.raises(torchtl.WeightsMismatchError, match="1 missing key: classifier.1.running_var"):
        torchtl.segmentation.fcn_resnet50(num_classes=3, weights=state)
    with pytest.raises(ValueError, match="segmentation backbones are resnet50 and resnet101"):
        torchtl._C.fcn_resnet("resnet18", 3, False)


@pytest.mark.cuda
def test_cuda_parity():
    tv, m = twins("deeplabv3_resnet50", num_classes=3)
    tv.cuda().eval(), m.cuda().eval()
    x = torch.randn(2, 3, 65, 97, device="cuda")
    with torch.no_grad():
        out_tv, out_m = tv(x), m(x)
    for k in ("out", "aux"):
        assert_close_rel(out_m[k], out_tv[k], 1e-4, f"cuda {k}")
