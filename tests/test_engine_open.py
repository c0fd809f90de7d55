"""fit opens up: torch.optim instances, any DataLoader or iterable, class weights, any nn.Module."""
import copy

import pytest
import torch
from torch import nn

import torchtl
from test_engine import loader, write_classification_set


@pytest.fixture(scope="module")
def cls_map(tmp_path_factory):
    return write_classification_set(tmp_path_factory.mktemp("cls"))


def losses(history):
    return torch.tensor([s for e in history["epochs"] for s in e["step_losses"]])


def cifar_net():
    """The network of PyTorch's CIFAR-10 classifier tutorial, as an nn.Sequential (32 px input)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 2))


class TutorialNet(nn.Module):
    """The same network as the tutorial writes it: a Python forward torchtl cannot move into C++."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        if self.training:
            self.calls += 1
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


OPTIMIZERS = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=1e-4),
            dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4), dict(optimizer="adam", lr=1e-3, weight_decay=1e-4)),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05), dict(optimizer="adamw", lr=1e-3, weight_decay=0.05)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_instance_runs_as_its_string_form(cls_map, name):
    make, string_form = OPTIMIZERS[name]
    base = torchtl.models.resnet18(num_classes=2)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    kwargs = dict(epochs=2, device="cpu", progress=False)
    ha = torchtl.engine.fit(a, loader(cls_map), optimizer=make(a.parameters()), **kwargs)
    hb = torchtl.engine.fit(b, loader(cls_map), **string_form, **kwargs)
    assert torch.equal(losses(ha), losses(hb))
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_param_groups_run_as_head_lr(cls_map):
    base = torchtl.models.resnet18(num_classes=2)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    body = [p for n, p in a.named_parameters() if not n.startswith("fc.")]
    opt = torch.optim.SGD([{"params": body}, {"params": a.fc.parameters(), "lr": 0.05}], lr=0.005, momentum=0.9,
                          nesterov=True)
    ha = torchtl.engine.fit(a, loader(cls_map), optimizer=opt, lr_schedule="cosine", epochs=2, device="cpu",
                            progress=False)
    hb = torchtl.engine.fit(b, loader(cls_map), optimizer="sgd", lr=0.005, head_lr=0.05, momentum=0.9, nesterov=True,
                            lr_schedule="cosine", epochs=2, device="cpu", progress=False)
    assert torch.equal(losses(ha), losses(hb))
    assert opt.param_groups[1]["lr"] == 0.05 and not opt.state  # the instance itself is not stepped


def test_rmsprop_matches_pytorch(cls_map):
    m = torchtl.models.resnet18(num_classes=2)
    tv = m.to_torchvision()
    kwargs = dict(epochs=1, device="cpu", seed=0, progress=False)
    make = lambda p: torch.optim.RMSprop(p, lr=1e-4, momentum=0.5, centered=True, weight_decay=1e-4)  # noqa: E731
    cpp = torchtl.engine.fit(m, loader(cls_map), optimizer=make(m.parameters()), **kwargs)
    ref = torchtl.reference.fit(tv, loader(cls_map), optimizer=make(tv.parameters()), **kwargs)
    torch.testing.assert_close(losses(cpp), losses(ref), rtol=1e-4, atol=1e-6)


def test_unsupported_optimizers_are_refused(cls_map):
    m = torchtl.models.resnet18(num_classes=2)
    with pytest.raises(TypeError, match="torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop.*Adagrad"):
        torchtl.engine.fit(m, loader(cls_map), optimizer=torch.optim.Adagrad(m.parameters()), device="cpu",
                           progress=False)
    with pytest.raises(ValueError, match="lr set the optimizer given by name"):
        torchtl.engine.fit(m, loader(cls_map), optimizer=torch.optim.SGD(m.parameters(), lr=0.1), lr=0.5,
                           device="cpu", progress=False)
    with pytest.raises(ValueError, match="maximize=True"):
        torchtl.engine.fit(m, loader(cls_map), optimizer=torch.optim.SGD(m.parameters(), lr=0.1, maximize=True),
                           device="cpu", progress=False)
    other = torchtl.models.resnet18(num_classes=2)
    with pytest.raises(ValueError, match="not a parameter of the model"):
        torchtl.engine.fit(m, loader(cls_map), optimizer=torch.optim.SGD(other.parameters(), lr=0.1), device="cpu",
                           progress=False)


def test_torch_dataloader_and_lists_train_as_torchtl_loader(cls_map):
    batches = [(x, y) for x, y in loader(cls_map, shuffle=False)]
    images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    torch_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    base = torchtl.models.resnet18(num_classes=2)
    runs = []
    for source in (loader(cls_map, shuffle=False), batches, torch_loader):
        m = copy.deepcopy(base)
        runs.append(torchtl.engine.fit(m, source, source, epochs=2, device="cpu", progress=False))
    for h in runs[1:]:
        assert torch.equal(losses(h), losses(runs[0]))
        assert h["epochs"][-1]["val"]["acc1"] == runs[0]["epochs"][-1]["val"]["acc1"]
    with pytest.raises(TypeError, match="has no len"):
        torchtl.engine.fit(base, (b for b in batches), device="cpu", progress=False)
    with pytest.raises(TypeError, match=r"must yield \(images, targets\) pairs"):
        torchtl.engine.fit(base, [images[:4]], device="cpu", progress=False)


def test_class_weights_match_pytorch(cls_map):
    m = torchtl.models.resnet18(num_classes=2)
    tv = m.to_torchvision()
    kwargs = dict(epochs=1, lr=0.01, device="cpu", class_weights=[0.2, 1.8], progress=False)
    cpp = torchtl.engine.fit(m, loader(cls_map), loader(cls_map, shuffle=False), **kwargs)
    ref = torchtl.reference.fit(tv, loader(cls_map), loader(cls_map, shuffle=False), **kwargs)
    unweighted = torchtl.engine.fit(copy.deepcopy(tv), loader(cls_map), epochs=1, lr=0.01, device="cpu",
                                    progress=False)
    torch.testing.assert_close(losses(cpp), losses(ref), rtol=1e-4, atol=1e-6)
    assert cpp["epochs"][0]["val"]["loss"] == pytest.approx(ref["epochs"][0]["val"]["loss"], rel=1e-4)
    assert not torch.allclose(losses(cpp)[:1], losses(unweighted)[:1])


def test_sequential_of_cpp_layers_trains_wholly_in_cpp(cls_map):
    net = cifar_net()
    assert torchtl.engine._cpp_model(net).module_info()[0] == "Sequential"  # C++ layers, no Python forward
    twin = copy.deepcopy(net)
    weight = net[0].weight
    kwargs = dict(epochs=2, lr=0.01, device="cpu", progress=False)
    cpp = torchtl.engine.fit(net, loader(cls_map), loader(cls_map, shuffle=False), **kwargs)
    ref = torchtl.reference.fit(twin, loader(cls_map), loader(cls_map, shuffle=False), **kwargs)
    torch.testing.assert_close(losses(cpp), losses(ref), rtol=1e-4, atol=1e-6)
    assert net[0].weight is weight  # trained in place: the module's own tensors
    torch.testing.assert_close(net[0].weight, twin[0].weight, rtol=1e-4, atol=1e-6)


def test_any_module_runs_its_python_forward_from_the_cpp_loop(cls_map, tmp_path):
    net = TutorialNet()
    twin, initial = copy.deepcopy(net), copy.deepcopy(net)
    kwargs = dict(epochs=2, lr=0.01, device="cpu", progress=False)
    cpp = torchtl.engine.fit(net, loader(cls_map), loader(cls_map, shuffle=False), checkpoint_dir=tmp_path, **kwargs)
    ref = torchtl.reference.fit(twin, loader(cls_map), loader(cls_map, shuffle=False), **kwargs)
    torch.testing.assert_close(losses(cpp), losses(ref), rtol=1e-4, atol=1e-6)
    assert int(net.calls) == 8  # 2 epochs x 4 training batches, through the Python forward
    torch.testing.assert_close(net.fc3.weight, twin.fc3.weight, rtol=1e-4, atol=1e-6)
    assert set(torch.load(tmp_path / "best.pt")) == set(net.state_dict())  # the Python names
    resumed = TutorialNet()
    torchtl.engine.fit(resumed, loader(cls_map), epochs=3, lr=0.01, device="cpu", checkpoint_dir=tmp_path,
                       resume=tmp_path / "last.pt", progress=False)
    # The resumed third epoch started from last.pt's weights and optimizer: it ends where 3 epochs in a row do.
    torchtl.engine.fit(initial, loader(cls_map), epochs=3, lr=0.01, device="cpu", progress=False)
    for (name, a), b in zip(initial.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)

    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return {"out": self.fc(x)}

    with pytest.raises(TypeError, match="forward to return a tensor of logits, got a dict"):
        torchtl.engine.fit(DictOut(), [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))], device="cpu",
                           progress=False)
