"""segmentation_models_pytorch's architectures in torchtl against smp 0.6.0 itself.

smp is a test dependency only (torchtl never imports it): without it these tests skip and say so.
tests/smp_parity.py prints the whole architecture x encoder table.
"""
import os
import pickle

import pytest
import torch
import torchvision
from torch import nn

import torchtl
from helpers import randomize_batchnorm
from smp_parity import INPUT_SIZE, build_pair, fast_path_ok, parity

smp = pytest.importorskip(
    "segmentation_models_pytorch",
    reason="segmentation_models_pytorch (pip install segmentation-models-pytorch==0.6.0) is the reference "
           "these parity tests compare against")

ARCHS = [a for a in INPUT_SIZE if hasattr(torchtl.segmentation, a)]
# Built for keys and shapes only (no forward), one per architecture: the smp_parity script covers
# their numbers.
LARGE_ENCODERS = ["resnet101", "resnet34", "resnet152", "resnext50_32x4d", "resnext101_32x8d"]


def test_torchtl_does_not_import_smp():
    import subprocess
    import sys

    code = ("import sys, torchtl, torchtl.segmentation; m = torchtl.segmentation.Unet(encoder_name='resnet18', "
            "encoder_weights=None); assert 'segmentation_models_pytorch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


@pytest.mark.parametrize("arch,encoder", [(arch, "resnet18") for arch in ARCHS] + [("Unet", "resnet50")])
def test_parity_with_smp(arch, encoder):
    r = parity(smp, arch, encoder)
    assert r["keys"], "state_dict keys, order or shapes differ from smp's"
    assert r["seeded"], "a seeded build draws other values than smp's constructor"
    assert r["eval_equal"], "exact-mode eval output differs from smp's"
    assert r["train_equal"], "exact-mode train output, gradients or batch-norm statistics differ from smp's"
    assert fast_path_ok(r), r


@pytest.mark.parametrize("arch,encoder", list(zip(ARCHS, LARGE_ENCODERS * 2)))
def test_keys_and_shapes_on_large_encoders(arch, encoder):
    reference, model = build_pair(smp, arch, encoder)
    a, b = model.state_dict(), reference.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in b)


UNET_VARIANTS = [
    dict(decoder_attention_type="scse", encoder_depth=3, decoder_channels=(64, 32, 16), decoder_interpolation="bilinear"),
    dict(in_channels=1),
    dict(in_channels=5, decoder_use_norm=False),
    dict(activation="sigmoid", aux_params=dict(classes=4, pooling="max", dropout=0.5, activation="softmax")),
]


@pytest.mark.parametrize("kwargs", UNET_VARIANTS, ids=lambda k: ",".join(k))
def test_unet_arguments_match_smp(kwargs):
    r = parity(smp, "Unet", "resnet18", **kwargs)
    assert r["keys"] and r["seeded"] and r["eval_equal"] and r["train_equal"], r
    assert fast_path_ok(r), r


def test_encoder_weights_from_torchvision_and_files(tmp_path):
    torch.manual_seed(3)
    tv = torchvision.models.resnet18()
    randomize_batchnorm(tv)
    path = tmp_path / "resnet18.pt"
    torch.save(tv.state_dict(), path)
    for source in (tv, tv.state_dict(), str(path)):
        m = torchtl.segmentation.Unet("resnet18", encoder_weights=source, classes=2)
        for k, v in tv.state_dict().items():
            if not k.startswith("fc."):
                assert torch.equal(m.encoder.state_dict()[k], v), k
    # in_channels != 3 adapts the pretrained first convolution as smp's patch_first_conv does
    for channels in (1, 2, 4):
        m = torchtl.segmentation.Unet("resnet18", encoder_weights=str(path), in_channels=channels)
        ref = smp.Unet("resnet18", encoder_weights=None, in_channels=3)
        ref.encoder.load_state_dict(tv.state_dict())
        smp.encoders._utils.patch_first_conv(ref.encoder, channels, pretrained=True)
        assert torch.equal(m.encoder.conv1.weight, ref.encoder.conv1.weight), channels


def test_downloadable_weights_raise_an_offline_error():
    with pytest.raises(RuntimeError, match="downloads nothing"):
        torchtl.segmentation.Unet("resnet34")  # smp's default encoder_weights="imagenet"
    with pytest.raises(FileNotFoundError):
        torchtl.segmentation.Unet("resnet34", encoder_weights="/no/such/file.pt")


def test_bad_arguments_raise_smps_errors():
    with pytest.raises(ValueError, match="not supported"):
        torchtl.segmentation.Unet("efficientnet-b0", encoder_weights=None)
    with pytest.raises(ValueError, match="decoder_channels"):
        torchtl.segmentation.Unet("resnet18", encoder_weights=None, encoder_depth=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        torchtl.segmentation.Unet("resnet18", encoder_weights=None, bogus=1)
    with pytest.raises(ValueError, match="layernorm"):
        torchtl.segmentation.Unet("resnet18", encoder_weights=None, decoder_use_norm="layernorm")


def test_weights_move_both_ways_and_pickle(tmp_path):
    reference, model = build_pair(smp, "Unet", "resnet18")
    path = tmp_path / "best.pt"
    torch.save(model.state_dict(), path)
    reference.load_state_dict(torch.load(path, weights_only=True))
    model2 = pickle.loads(pickle.dumps(model))
    assert isinstance(model2, torchtl.segmentation.Unet) and isinstance(model2, nn.Module)
    x = torch.randn(1, 3, 64, 64)
    model.eval(), model2.eval(), reference.eval()
    with torch.no_grad(), torchtl.exact_mode():
        assert torch.equal(model(x), reference(x))
        assert torch.equal(model2(x), reference(x))


def test_python_forward_equals_cpp_and_hooks_fire():
    reference, model = build_pair(smp, "Unet", "resnet18", decoder_attention_type="scse")
    model.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    seen = []
    handle = model.decoder.blocks[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad(), torchtl.exact_mode():
        out = model(x)  # a hook below the root: smp's Python forward over the same tensors
        assert seen == [(2, 128, 8, 8)]
        assert torch.equal(out, reference(x))
    handle.remove()
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), reference(x), atol=1e-5)


def test_input_shape_check_as_smp():
    _, model = build_pair(smp, "Unet", "resnet18")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 70)).shape == (1, 3, 70, 70)  # Unet takes any size, as smp's


def test_unet_trains_through_engine_fit_from_a_map_file(tmp_path):
    from test_engine import seg_loader, write_segmentation_set

    seg_map = write_segmentation_set(tmp_path)  # 32 px images, classes 0..2 and 255 (ignored)
    torch.manual_seed(0)
    model = torchtl.segmentation.Unet("resnet18", encoder_weights=None, classes=3, decoder_channels=(32, 16, 16, 8, 8))
    before = model.segmentation_head[0].weight.detach().clone()
    kwargs = dict(task="segmentation", lr=0.01, epochs=2, device="cpu", progress=False)
    history = torchtl.engine.fit(model, seg_loader(seg_map), seg_loader(seg_map), checkpoint_dir=tmp_path / "run",
                                 **kwargs)
    assert len(history["epochs"]) == 2 and all(0.0 <= e["val"]["miou"] <= 1.0 for e in history["epochs"])
    assert not torch.equal(before, model.segmentation_head[0].weight)
    # best.pt loads into smp's own model, and the Python reference loop trains smp's model alike
    ref = smp.Unet("resnet18", encoder_weights=None, classes=3, decoder_channels=(32, 16, 16, 8, 8))
    ref.load_state_dict(torch.load(tmp_path / "run" / "best.pt", weights_only=True))
    twin = smp.Unet("resnet18", encoder_weights=None, classes=3, decoder_channels=(32, 16, 16, 8, 8))
    ref_history = torchtl.reference.fit(twin, seg_loader(seg_map), seg_loader(seg_map), **kwargs)
    assert len(ref_history["epochs"]) == 2


def test_engine_refuses_aux_params_models(tmp_path):
    from test_engine import seg_loader, write_segmentation_set

    model = torchtl.segmentation.Unet("resnet18", encoder_weights=None, classes=3, aux_params=dict(classes=3))
    with pytest.raises(ValueError, match="aux_params"):
        torchtl.engine.evaluate(model, seg_loader(write_segmentation_set(tmp_path)), task="segmentation", device="cpu")
