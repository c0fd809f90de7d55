"""torchvision's names for pretrained weights (enums, "IMAGENET1K_V1", "DEFAULT",
"ResNet18_Weights.IMAGENET1K_V1") resolved as torchvision resolves them, from torch.hub's cache and
never from the network: a cache miss is one error naming the weights and the way to a local file."""
import os
import urllib.request

import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights

import torchtl


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch.hub cache, and a network that fails the test if anything reaches for it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("torchtl reached for the network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert torch.hub.get_dir() == os.path.join(str(tmp_path), "hub")
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture
def cached_resnet18(hub):
    """torch.hub's cached file of ResNet18_Weights.IMAGENET1K_V1: here a fresh torchvision model's weights."""
    torch.manual_seed(3)
    state = torchvision.models.resnet18(weights=None).state_dict()
    hub.mkdir(parents=True)
    torch.save(state, hub / "resnet18-f37072fd.pth")
    assert os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url) == "resnet18-f37072fd.pth"
    return state


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1",
                                     ResNet18_Weights.DEFAULT, ResNet18_Weights.IMAGENET1K_V1])
def test_weight_names_load_from_the_hub_cache(cached_resnet18, weights):
    m = torchtl.models.resnet18(weights=weights)
    got = m.state_dict()
    assert got.keys() == cached_resnet18.keys()
    assert all(torch.equal(got[k], cached_resnet18[k]) for k in got)


def test_reference_scripts_get_model_call(cached_resnet18):
    # torchvision's references: torchvision.models.get_model(args.model, weights=args.weights, ...),
    # with torchtl's builders in the model lookup.
    builder = getattr(torchtl.models, "resnet18")
    m = builder(weights="ResNet18_Weights.IMAGENET1K_V1", num_classes=1000)
    assert torch.equal(m.fc.weight, cached_resnet18["fc.weight"])


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", ResNet18_Weights.DEFAULT])
def test_a_cache_miss_names_the_weights_and_the_local_file_way(hub, weights):
    with pytest.raises(FileNotFoundError) as error:
        torchtl.models.resnet18(weights=weights)
    message = str(error.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message and "torchtl downloads nothing" in message, message
    assert str(hub / "resnet18-f37072fd.pth") in message and 'weights="resnet18-f37072fd.pth"' in message, message


def test_segmentation_weight_names_resolve_without_a_network(hub):
    with pytest.raises(FileNotFoundError, match=r"weights FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1 are not in "
                                                r"torch.hub's cache .*torchtl downloads nothing"):
        torchtl.segmentation.fcn_resnet50(weights="DEFAULT")
    with pytest.raises(FileNotFoundError, match=r"weights ResNet50_Weights.IMAGENET1K_V1 are not in torch.hub's cache"):
        torchtl.segmentation.deeplabv3_resnet50(weights_backbone="IMAGENET1K_V1", num_classes=3)


def test_a_name_of_other_weights_or_a_missing_file_is_named(hub, tmp_path):
    with pytest.raises(ValueError, match=r"weights='ResNet50_Weights.IMAGENET1K_V2': not a member of ResNet18_Weights "
                                         r"\(these are: IMAGENET1K_V1, DEFAULT\), nor a file"):
        torchtl.models.resnet18(weights="ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(FileNotFoundError, match="weights file not found: .*resnet18.pth"):
        torchtl.models.resnet18(weights=str(tmp_path / "resnet18.pth"))


def test_a_local_file_is_still_a_path(hub, tmp_path):
    torch.manual_seed(4)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    m = torchtl.models.resnet18(weights=str(tmp_path / "resnet18.pth"))
    assert torch.equal(m.conv1.weight, state["conv1.weight"])
