import os
import warnings

import pytest
import torch
import torchvision
from torch import nn

import torchtl
from helpers import randomize_batchnorm


@pytest.fixture(scope="module")
def tv18():
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None)
    randomize_batchnorm(tv)
    return tv.eval()


def assert_same_weights(m, tv):
    sd = tv.state_dict()
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_every_weight_source(tv18, tmp_path):
    state = tv18.state_dict()
    torch.save(state, tmp_path / "sd.pth")
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pth")
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, tmp_path / "ddp.pth")
    torch.jit.trace(tv18, torch.randn(1, 3, 64, 64)).save(str(tmp_path / "traced.pt"))
    torch.jit.script(tv18).save(str(tmp_path / "scripted.pt"))
    sources = [
        tv18,
        state,
        {"module." + k: v for k, v in state.items()},  # DataParallel checkpoints
        str(tmp_path / "sd.pth"),
        tmp_path / "ckpt.pth",
        tmp_path / "ddp.pth",  # a DistributedDataParallel checkpoint, read by the C++ reader
        str(tmp_path / "traced.pt"),
        str(tmp_path / "scripted.pt"),
    ]
    for source in sources:
        m = torchtl.models.resnet18(weights=source)
        assert_same_weights(m, tv18)
    m = torchtl.models.resnet18()
    result = torchtl.load_weights(m, str(tmp_path / "traced.pt"))
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert_same_weights(m, tv18)


def test_mismatch_lists_every_key(tv18):
    state = dict(tv18.state_dict())
    del state["layer1.0.conv1.weight"]
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    m = torchtl.models.resnet18()
    with pytest.raises(torchtl.WeightsMismatchError) as info:
        torchtl.load_weights(m, state)
    msg = str(info.value)
    assert "2 missing keys: layer1.0.conv1.weight, fc.bias" in msg
    assert "1 unexpected key: extra.weight" in msg
    assert "1 wrongly shaped key: conv1.weight (weights [64, 1, 7, 7], model [64, 3, 7, 7])" in msg
    assert isinstance(info.value, ValueError)


def test_non_strict_returns_keys_but_shapes_still_raise(tv18):
    state = {k: v for k, v in tv18.state_dict().items() if not k.startswith("fc.")}
    m = torchtl.models.resnet18()
    result = torchtl.load_weights(m, state, strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"] and result.unexpected_keys == []
    state["conv1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="wrongly shaped key: conv1.weight"):
        torchtl.load_weights(m, state, strict=False)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        torchtl.models.resnet18(weights=str(tmp_path / "nope.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not an archive at all")
    with pytest.raises(ValueError, match="is not a PyTorch archive"):
        torchtl.models.resnet18(weights=str(garbage))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        torchtl.models.resnet18(weights=str(tmp_path / "list.pt"))
    with pytest.raises(TypeError, match="weights must be"):
        torchtl.models.resnet18(weights=42)


def test_other_num_classes_reinitialises_only_head(tv18, tmp_path):
    torch.jit.trace(tv18, torch.randn(1, 3, 64, 64)).save(str(tmp_path / "resnet18_Python.pt"))
    with pytest.warns(UserWarning, match="re-initialised fc.weight, fc.bias"):
        m = torchtl.models.resnet18(num_classes=2, weights=str(tmp_path / "resnet18_Python.pt"))
    assert m.fc.out_features == 2
    sd = tv18.state_dict()
    for k, v in m.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, sd[k]), k
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torchtl.models.resnet18(weights=tv18).fc.out_features == 1000  # inferred, no warning


def test_export_traced_round_trip(tmp_path):
    m = torchtl.models.resnet18(num_classes=3).eval()
    path = torchtl.export_traced(m, tmp_path / "out.pt", torch.randn(1, 3, 64, 64))
    traced = torch.jit.load(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), m(x), rtol=1e-5, atol=1e-5)
    back = torchtl.models.resnet18(weights=path)
    assert_same_weights(back, m)


def test_cpp_written_state_dict_opens_in_python(tmp_path):
    m = torchtl.models.resnet18(num_classes=4)
    path = str(tmp_path / "from_cpp.pt")
    torchtl._C.save_state_dict(torchtl._C.state_dict(m._cpp), path)
    state = torch.load(path)  # weights_only=True, torch's default
    assert list(state) == list(m.state_dict())
    tv = torchvision.models.resnet18(num_classes=4)
    tv.load_state_dict(state)
    assert_same_weights(m, tv)
    assert not os.path.exists(path + ".tmp")


def test_cpp_reads_back_what_it_wrote(tmp_path):
    m = torchtl.models.resnet18(num_classes=4)
    path = str(tmp_path / "w.pt")
    torchtl._C.save_state_dict(torchtl._C.state_dict(m._cpp), path)
    pairs = torchtl._C.read_weights(path)
    assert [k for k, _ in pairs] == list(m.state_dict())
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in pairs)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "ordered.pth")  # an OrderedDict, as Python writes them
    pairs = torchtl._C.read_weights(str(tmp_path / "ordered.pth"))
    assert [k for k, _ in pairs] == list(tv.state_dict())
    torch.save(tv, tmp_path / "module.pth")
    with pytest.raises(ValueError, match="torchvision.models.resnet.ResNet"):
        torchtl.models.resnet18(weights=str(tmp_path / "module.pth"))
