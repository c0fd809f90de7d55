"""torchtl models as torch.nn.Modules: every tool that works on torchvision's model works on
torchtl's with the same result, and the plain call still runs in C++."""
import copy
import functools
import io

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torchvision.ops import FrozenBatchNorm2d

import torchtl
from helpers import assert_close_rel, randomize_batchnorm

X = torch.randn(2, 3, 64, 64)


@pytest.fixture(autouse=True)
def _exact_mode():
    """Equality with torchvision runs in exact mode; tests/test_fast_path.py covers the fast path."""
    with torchtl.exact_mode():
        yield


def twins(arch="resnet18", **kwargs):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(weights=None, **kwargs)
    randomize_batchnorm(tv)
    m = getattr(torchtl.models, arch)(weights=tv, **kwargs)
    return tv.eval(), m.eval()


@pytest.fixture
def forbid_python_forward(monkeypatch):
    """Makes torchvision's Python block forwards raise once called, so a passing call proves the C++ path ran."""

    def refuse(self, x):
        raise AssertionError("the Python forward ran")

    def forbid():
        monkeypatch.setattr(torchvision.models.resnet.BasicBlock, "forward", refuse)
        monkeypatch.setattr(torchvision.models.resnet.Bottleneck, "forward", refuse)

    return forbid


# ---- seeded initialisation ----------------------------------------------------------------------

SMALL = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2"]
BIG = ["resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"]


def assert_same_draws(build_tv, build_tl, seed):
    torch.manual_seed(seed)
    tv = build_tv()
    after_tv = torch.get_rng_state()
    torch.manual_seed(seed)
    m = build_tl()
    after_tl = torch.get_rng_state()
    assert list(m.state_dict()) == list(tv.state_dict())
    for (name, a), b in zip(m.state_dict().items(), tv.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(after_tl, after_tv), "the RNG state after construction differs"


@pytest.mark.parametrize("arch", SMALL + BIG)
def test_seeded_initialisation_equals_torchvision(arch):
    kwargs = {} if arch in SMALL else {"num_classes": 7}
    assert_same_draws(lambda: getattr(torchvision.models, arch)(**kwargs),
                      lambda: getattr(torchtl.models, arch)(**kwargs), seed=3)


def test_seeded_initialisation_with_zero_init_residual_and_dilation():
    kwargs = dict(zero_init_residual=True, replace_stride_with_dilation=[False, True, True], num_classes=4)
    assert_same_draws(lambda: torchvision.models.resnet50(**kwargs), lambda: torchtl.models.resnet50(**kwargs), 5)


@pytest.mark.parametrize("name", torchtl.segmentation.__all__)
@pytest.mark.parametrize("aux_loss", [False, True])
def test_seeded_segmentation_initialisation_equals_torchvision(name, aux_loss):
    kwargs = dict(weights=None, weights_backbone=None, num_classes=5, aux_loss=aux_loss)
    assert_same_draws(lambda: getattr(torchvision.models.segmentation, name)(**kwargs),
                      lambda: getattr(torchtl.segmentation, name)(**kwargs), seed=1)


# ---- which forward runs ------------------------------------------------------------------------


def test_plain_call_runs_cpp_with_root_hooks(forbid_python_forward):
    tv, m = twins()
    ones = torch.ones(1, 64, 8, 8)
    with torch.no_grad():
        expected, expected_layer1 = tv(2 * X), tv.layer1(ones)
    forbid_python_forward()
    seen = []
    m.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    m.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    with torch.no_grad():
        out = m(X)
        assert torch.equal(m.layer1(ones), expected_layer1)  # the root's pre-hook is not the layer's
    assert torch.equal(out, expected)  # C++ ran on the pre-hook's doubled input
    assert seen == [out.shape]
    assert m._tree.mismatch(m) is None


def test_hooks_at_every_depth_fire_and_change_the_output():
    tv, m = twins("resnet50", num_classes=6)
    fired = {id(tv): [], id(m): []}
    for model in (tv, m):
        log = fired[id(model)]
        model.layer2[0].conv1.register_forward_hook(lambda mod, args, out: out * 0.5)
        model.layer3.register_forward_pre_hook(lambda mod, args: (args[0] + 1.0,))
        model.layer1[1].bn2.register_forward_hook(lambda mod, args, out, log=log: log.append("bn2"))
        model.layer4[2].register_full_backward_hook(lambda mod, gin, gout, log=log: log.append("backward"))
    x = X.clone().requires_grad_()
    out_tv, out_m = tv(x), m(x)
    assert_close_rel(out_m, out_tv, 1e-5, "hooked output")
    out_tv.sum().backward()
    out_m.sum().backward()
    assert fired[id(m)] == fired[id(tv)] == ["bn2", "backward"]
    with pytest.raises(RuntimeError, match="has hooks"):
        m._cpp  # the C++ engine would not fire them


def test_global_module_hooks_fire_in_every_module():
    _, m = twins()
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, args, out: calls.append(type(mod)))
    try:
        with torch.no_grad():
            m(X)
    finally:
        handle.remove()
    assert nn.Conv2d in calls and torchtl.models.BasicBlock in calls


def test_fx_feature_extractor_equals_torchvision():
    tv, m = twins()
    assert get_graph_node_names(m) == get_graph_node_names(tv)
    nodes = ["layer1.0.relu_1", "layer2.1.add", "layer4", "flatten", "fc"]
    fx_tv, fx_m = create_feature_extractor(tv, nodes), create_feature_extractor(m, nodes)
    with torch.no_grad():
        a, b = fx_m(X), fx_tv(X)
    assert list(a) == nodes
    for name in nodes:
        assert_close_rel(a[name], b[name], 1e-5, name)
    traced = torch.fx.symbolic_trace(m)
    with torch.no_grad():
        assert_close_rel(traced(X), tv(X), 1e-5, "symbolic_trace")


def test_children_called_from_python_equal_fx_bit_for_bit():
    # torchvision's test_feature_extraction_methods_equivalence: its IntermediateLayerGetter calls
    # each torchtl child (C++ forward) and must equal, bit for bit, the fx graph of the same model
    # (Python forward); in exact mode the two run the same kernels.
    from torchvision.models._utils import IntermediateLayerGetter

    _, m = twins()
    return_layers = {f"layer{i}": f"layer{i}" for i in range(1, 5)}
    ilg = IntermediateLayerGetter(m, return_layers).eval()
    fx = create_feature_extractor(m, return_layers)
    with torch.no_grad():
        a, b = ilg(X), fx(X)
        eager, traced = m(X), torch.fx.symbolic_trace(m)(X)
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert torch.equal(eager, traced)


def test_jit_script_equals_eager(tmp_path):
    tv, m = twins("resnet50", num_classes=3)
    scripted = torch.jit.script(m)
    assert scripted.original_name == "ResNet"
    with torch.no_grad():
        assert_close_rel(scripted(X), m(X), 1e-5, "script")
    scripted.save(str(tmp_path / "m.pt"))
    with torch.no_grad():
        assert_close_rel(torch.jit.load(str(tmp_path / "m.pt"))(X), tv(X), 1e-5, "script archive")


def test_jit_script_segmentation():
    torch.manual_seed(0)
    m = torchtl.segmentation.fcn_resnet50(num_classes=3, aux_loss=True).eval()
    x = torch.randn(1, 3, 48, 48)
    scripted = torch.jit.script(m)
    with torch.no_grad():
        a, b = scripted(x), m(x)
    assert list(a) == ["out", "aux"]
    assert_close_rel(a["out"], b["out"], 1e-5, "script out")


def test_functional_call_uses_the_given_tensors():
    tv, m = twins()
    params = {k: v.detach() * 1.5 for k, v in tv.named_parameters()}
    params = {k: v.requires_grad_() for k, v in params.items()}
    out_tv = torch.func.functional_call(tv, params, (X,))
    out_m = torch.func.functional_call(m, params, (X,))
    assert_close_rel(out_m, out_tv, 1e-5, "functional_call")
    out_m.sum().backward()
    assert params["layer3.0.conv2.weight"].grad is not None
    assert m.layer3[0].conv2.weight.grad is None
    with torch.no_grad():  # the model's own weights are back in C++
        assert_close_rel(m(X), tv(X), 1e-5, "after functional_call")
    grads = torch.func.grad(lambda p: torch.func.functional_call(m, p, (X,)).sum())(
        {k: v.detach() for k, v in m.named_parameters()})
    assert grads["fc.weight"].shape == m.fc.weight.shape


def test_assigned_parameters_reach_the_forward_and_get_gradients(forbid_python_forward):
    tv, m = twins()
    conv1, fc = tv.conv1.weight.detach() * -1.0, tv.fc.weight.detach() + 0.5
    for model in (tv, m):
        model.conv1.weight = nn.Parameter(conv1.clone())
        model.fc.weight = nn.Parameter(fc.clone())
    out_tv = tv(X)
    forbid_python_forward()
    out_m = m(X)  # still the C++ path: the new tensors were handed to C++
    assert_close_rel(out_m, out_tv, 1e-5, "assigned parameters")
    out_m.sum().backward()
    assert m.fc.weight.grad is not None and m.conv1.weight.grad is not None
    assert dict(m._cpp.named_parameters(recurse=True))["fc.weight"] is m.fc.weight


def test_parametrize_applies():
    tv, m = twins()

    class Scale(nn.Module):
        def forward(self, w):
            return w * 0.25

    for model in (tv, m):
        torch.nn.utils.parametrize.register_parametrization(model.layer2[1].conv1, "weight", Scale())
    with torch.no_grad():
        assert_close_rel(m(X), tv(X), 1e-5, "parametrized")
    with pytest.raises(RuntimeError, match="is now a ParametrizedConv2d"):
        m._cpp
    clone = copy.deepcopy(m)
    with torch.no_grad():
        assert_close_rel(clone(X), tv(X), 1e-5, "deepcopy keeps the parametrization")


def test_modules_dict_edits_and_removed_children():
    tv, m = twins()
    head = nn.Sequential(nn.Linear(512, 7), nn.Tanh())
    for model in (tv, m):
        model._modules["fc"] = copy.deepcopy(head)
        model.layer3._modules["1"] = nn.Identity()
    m.fc.load_state_dict(tv.fc.state_dict())
    with torch.no_grad():
        assert_close_rel(m(X), tv(X), 1e-5, "_modules edits")
    assert list(m.state_dict()) == list(tv.state_dict())
    with pytest.raises(RuntimeError, match="replaced or removed"):
        m._cpp
    for model in (tv, m):
        model.fc = None
    with pytest.raises(TypeError) as e_tv:
        tv(X)
    with pytest.raises(TypeError) as e_m:
        m(X)
    assert str(e_m.value) == str(e_tv.value)
    for model in (tv, m):
        del model.fc
    with pytest.raises(AttributeError, match="has no attribute 'fc'"):
        m(X)


def test_layers_without_a_cpp_twin_run_in_python():
    tv, m = twins()
    for model in (tv, m):
        model.bn1 = nn.GroupNorm(8, 64)
        model.layer1[0].relu = nn.GELU()
    with torch.no_grad():
        assert_close_rel(m(X), tv(X), 1e-5, "GroupNorm and GELU")
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    clone = torch.load(buffer, weights_only=False)
    assert isinstance(clone.bn1, nn.GroupNorm)
    with torch.no_grad():
        assert_close_rel(clone(X), tv(X), 1e-5, "pickled")


def test_changed_options_are_honoured():
    tv, m = twins()
    for model in (tv, m):
        model.layer2[0].conv1.stride = (1, 1)
        model.layer2[0].downsample[0].stride = (1, 1)
        model.maxpool.kernel_size = 5
    with torch.no_grad():
        assert_close_rel(m(X), tv(X), 1e-5, "options")


def test_quantize_dynamic():
    tv, m = twins()
    q_tv = torch.ao.quantization.quantize_dynamic(tv, {nn.Linear}, dtype=torch.qint8)
    q_m = torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)
    assert type(q_m.fc) is type(q_tv.fc) and type(q_m.fc) is not nn.Linear
    assert isinstance(m.fc, nn.Linear)  # the original is untouched
    with torch.no_grad():
        assert torch.equal(q_m(X), q_tv(X))


def test_export_holds_weights_as_parameters():
    tv, m = twins()
    ep = torch.export.export(m, (X,))
    signature = ep.graph_signature
    assert len(signature.parameters) == len(list(m.parameters()))
    assert not ep.constants
    assert all(name in m.state_dict() for name in signature.parameters)
    assert set(ep.state_dict) == set(m.state_dict())
    with torch.no_grad():
        assert_close_rel(ep.module()(X), tv(X), 1e-5, "exported")
    fresh = torchvision.models.resnet18()
    fresh.load_state_dict(ep.state_dict)
    fresh.eval()
    with torch.no_grad():
        assert_close_rel(fresh(X), tv(X), 1e-5, "exported state dict")


def test_compile_fullgraph():
    tv, m = twins()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_close_rel(compiled(X), tv(X), 1e-5, "compiled")


def test_compile_fullgraph_with_inductor():
    # The default backend: inductor generates and compiles C++ for the CPU (a minute on 2 cores).
    tv, m = twins()
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        eager = m(X)
        torch.testing.assert_close(compiled(X), eager, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(compiled(X), tv(X), atol=1e-4, rtol=1e-4)


# ---- builder arguments -------------------------------------------------------------------------


@pytest.mark.parametrize("norm_layer", [nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d])
def test_norm_layer(norm_layer):
    assert_same_draws(lambda: torchvision.models.resnet50(norm_layer=norm_layer, num_classes=3),
                      lambda: torchtl.models.resnet50(norm_layer=norm_layer, num_classes=3), seed=2)
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(norm_layer=norm_layer, num_classes=3)
    randomize_batchnorm(tv)
    m = torchtl.models.resnet50(norm_layer=norm_layer, num_classes=3, weights=tv)
    assert type(m.layer1[0].bn1) is norm_layer
    assert type(m.layer1[0].downsample[1]) is norm_layer
    for model in (tv, m):
        model.train() if norm_layer is not nn.SyncBatchNorm else model.eval()
    out_tv, out_m = tv(X), m(X)
    assert_close_rel(out_m, out_tv, 1e-5, f"{norm_layer.__name__} output")
    if norm_layer is FrozenBatchNorm2d:
        assert m._tree.mismatch(m) is None  # C++ holds its own FrozenBatchNorm2d
        assert m.layer1[0].bn1.weight.grad is None and not m.layer1[0].bn1.weight.requires_grad


def test_groups_width_and_dilation_arguments():
    kwargs = dict(groups=4, width_per_group=32, replace_stride_with_dilation=(False, False, True), num_classes=3)
    assert_same_draws(lambda: torchvision.models.resnet50(**kwargs), lambda: torchtl.models.resnet50(**kwargs), 4)


def test_builder_argument_errors():
    with pytest.raises(TypeError, match="norm_layer=.*GroupNorm"):
        torchtl.models.resnet18(norm_layer=functools.partial(nn.GroupNorm, 8))
    with pytest.raises(TypeError, match="unexpected keyword argument 'dropout'"):
        torchtl.models.resnet18(dropout=0.1)
    with pytest.raises(ValueError, match="The parameter 'groups' expected value 32 but got 8"):
        torchtl.models.resnext50_32x4d(groups=8)
    with pytest.raises(ValueError, match="BasicBlock only supports groups=1"):
        torchtl.models.resnet18(groups=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'norm_layer'"):
        torchtl.segmentation.fcn_resnet50(norm_layer=nn.BatchNorm2d)
    with pytest.warns(UserWarning, match="'pretrained' is deprecated"):
        assert torchtl.models.resnet18(pretrained=False).fc.out_features == 1000


def test_deeplabv3_batch_of_one_in_training_is_a_value_error():
    tv = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=2).train()
    m = torchtl.segmentation.deeplabv3_resnet50(num_classes=2).train()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        tv(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        m(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        m._cpp_module.forward(x)
