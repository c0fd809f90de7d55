"""The references' recipe pieces in C++ held to torchvision / torch: the EMA model
(AveragedModel with ema_avg, use_buffers=True), weight-decay groups (split_normalization_params,
utils.set_weight_decay), warm-up / lr_min / exponential schedules (torch.optim.lr_scheduler) and
RASampler's indices."""
import math

import pytest
import torch
import torchvision
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel
from torchvision.ops._utils import split_normalization_params

import torchtl
from torchtl import _C

NORM_CLASSES = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm,
                torch.nn.modules.instancenorm._InstanceNorm, torch.nn.LocalResponseNorm)


def _references_ema(model, decay):
    # references/classification/utils.py ExponentialMovingAverage: an AveragedModel whose avg_fn is
    # decay * avg + (1 - decay) * param, over parameters and buffers.
    return AveragedModel(model, "cpu", lambda avg, param, n: decay * avg + (1 - decay) * param, use_buffers=True)


def test_adjusted_decay_is_the_references():
    for decay, batch, world, steps, epochs in ((0.99998, 128, 8, 32, 600), (0.9, 4, 1, 2, 10), (0.5, 64, 2, 8, 3)):
        alpha = min(1.0, (1.0 - decay) * (world * batch * steps / epochs))
        assert _C.engine.adjusted_ema_decay(decay, batch, world, steps, epochs) == 1.0 - alpha


def test_ema_follows_averaged_model_through_training():
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=3)
    twin = torchvision.models.resnet18(num_classes=3)
    twin.load_state_dict(model.state_dict())
    decay = _C.engine.adjusted_ema_decay(0.9, 4, 1, 2, 10)  # 0.92
    ref = _references_ema(twin, decay)
    ours = _C.engine.ExponentialMovingAverage(model._cpp, decay)
    model_ema_steps, lr_warmup_epochs, iters = 2, 1, 5
    g = torch.Generator().manual_seed(1)
    for epoch in range(2):
        for i in range(iters):
            # A training step's effect on the averaged tensors: every parameter and running
            # statistic moves, num_batches_tracked counts.
            with torch.no_grad():
                for t in list(model.parameters()) + list(model.buffers()):
                    t.add_(torch.randn(t.shape, generator=g) * 0.1 if t.is_floating_point() else torch.ones_like(t))
            twin.load_state_dict(model.state_dict())
            if i % model_ema_steps == 0:
                ref.update_parameters(twin)
                ours.update_parameters(model._cpp)
                if epoch < lr_warmup_epochs:
                    ref.n_averaged.fill_(0)
                    ours.reset_n_averaged()
    assert ours.n_averaged == int(ref.n_averaged) == 3
    expected, got = ref.state_dict(), ours.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7, msg=key)
        assert got[key].dtype == value.dtype, key
    assert torch.equal(got["module.bn1.num_batches_tracked"], expected["module.bn1.num_batches_tracked"])
    # The averages written into a model load into the torchvision twin as its own weights.
    copy = torchtl.models.resnet18(num_classes=3)
    ours.copy_to(copy._cpp)
    for key, value in ref.module.state_dict().items():
        torch.testing.assert_close(copy.state_dict()[key], value, rtol=1e-6, atol=1e-7, msg=key)
    # Resume: the references' checkpoint["model_ema"] restores the average and its count.
    again = _C.engine.ExponentialMovingAverage(torchtl.models.resnet18(num_classes=3)._cpp, decay)
    again.load_state_dict(ref.state_dict())
    assert again.n_averaged == 3
    for key, value in again.state_dict().items():
        assert torch.equal(value, expected[key]), key
    with pytest.raises(ValueError, match="missing"):
        again.load_state_dict({"n_averaged": torch.tensor(1)})


def _references_weight_decay(model, weight_decay, norm_weight_decay, bias_weight_decay):
    # references/classification/utils.py set_weight_decay as train.py calls it (custom key "bias"):
    # each module's own trainable parameters, parents before children; a parameter named "bias"
    # goes to the bias group first, then a norm layer's to the norm group, the rest to "other".
    groups = {"other": [], "norm": [], "bias": []}

    def visit(module):
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if bias_weight_decay is not None and name == "bias":
                groups["bias"].append(p)
            elif norm_weight_decay is not None and isinstance(module, NORM_CLASSES):
                groups["norm"].append(p)
            else:
                groups["other"].append(p)
        for child in module.children():
            visit(child)

    visit(model)
    decays = {"other": weight_decay, "norm": norm_weight_decay, "bias": bias_weight_decay}
    return [(decays[k], v) for k, v in groups.items() if v]


def _same_tensors(a, b):
    return len(a) == len(b) and all(x.data_ptr() == y.data_ptr() and x.shape == y.shape for x, y in zip(a, b))


@pytest.fixture(scope="module")
def models():
    resnet = torchtl.models.resnet18(num_classes=3)
    resnet.conv1.weight.requires_grad_(False)  # frozen parameters stay out of every group
    segmentation = torchtl.segmentation.fcn_resnet50(num_classes=3, aux_loss=True, weights_backbone=None)
    return [resnet, segmentation]


def test_split_normalization_params_is_torchvisions(models):
    for model in models:
        norm, other = split_normalization_params(model)
        ours_norm, ours_other = _C.engine.split_normalization_params(model._cpp)
        assert len(norm) > 10 and _same_tensors(ours_norm, norm) and _same_tensors(ours_other, other)


@pytest.mark.parametrize("norm_weight_decay,bias_weight_decay", [(None, None), (0.0, None), (None, 0.0), (0.0, 1e-5)])
def test_weight_decay_groups_are_the_references(models, norm_weight_decay, bias_weight_decay):
    for model in models:
        expected = _references_weight_decay(model, 1e-4, norm_weight_decay, bias_weight_decay)
        ours = _C.engine.weight_decay_groups(model._cpp, 1e-4, norm_weight_decay, bias_weight_decay)
        assert [g.weight_decay for g in ours] == [d for d, _ in expected]
        assert all(_same_tensors(g.params, p) for g, (_, p) in zip(ours, expected))


def _torch_lrs(kind, epochs, warmup_epochs, warmup_method, warmup_decay, lr_min, gamma, base_lrs):
    # references/classification/train.py's scheduler: the main one after a warm-up, stepped per epoch.
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)], lr=base_lrs[0])
    if kind == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup_epochs, eta_min=lr_min)
    elif kind == "exponential":
        main = lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    else:
        main = lr_scheduler.StepLR(optimizer, step_size=2, gamma=gamma)
    if warmup_epochs > 0:
        warm = (lr_scheduler.LinearLR(optimizer, start_factor=warmup_decay, total_iters=warmup_epochs)
                if warmup_method == "linear" else
                lr_scheduler.ConstantLR(optimizer, factor=warmup_decay, total_iters=warmup_epochs))
        main = lr_scheduler.SequentialLR(optimizer, schedulers=[warm, main], milestones=[warmup_epochs])
    out = []
    for _ in range(epochs):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        main.step()
    return out


@pytest.mark.parametrize("kind,warmup_epochs,warmup_method,warmup_decay,lr_min,gamma", [
    ("cosine", 3, "linear", 0.01, 1e-4, 0.1),
    ("cosine", 2, "constant", 0.1, 0.0, 0.1),
    ("cosine", 0, "linear", 0.01, 5e-4, 0.1),
    ("exponential", 0, "linear", 0.01, 0.0, 0.8),
    ("exponential", 2, "constant", 0.3, 0.0, 0.9),
    ("step", 2, "linear", 0.2, 0.0, 0.5),
])
def test_schedules_match_torch_lr_scheduler(kind, warmup_epochs, warmup_method, warmup_decay, lr_min, gamma):
    import warnings

    epochs, base_lrs = 9, [0.1, 0.02]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecation notes
        expected = _torch_lrs(kind, epochs, warmup_epochs, warmup_method, warmup_decay, lr_min, gamma, base_lrs)
    ours = _C.engine.LRSchedule(kind, epochs, iters_per_epoch=1, step_size=2, gamma=gamma, warmup_epochs=warmup_epochs,
                                warmup_factor=warmup_decay, warmup_method=warmup_method, lr_min=lr_min)
    for epoch in range(epochs):
        got = [ours.lr(epoch, base) for base in base_lrs]
        assert got == pytest.approx(expected[epoch], rel=1e-12, abs=1e-15), (epoch, got, expected[epoch])


def test_schedule_refusals():
    with pytest.raises(ValueError, match="lr_warmup_method 'cosine'"):
        _C.engine.LRSchedule("cosine", 5, warmup_epochs=1, warmup_method="cosine")
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        _C.engine.LRSchedule("linear", 5)
    with pytest.raises(ValueError, match="lr_min"):
        _C.engine.LRSchedule("cosine", 5, lr_min=-1.0)


def _references_ra_indices(size, epoch, replicas, rank, shuffle, seed, repetitions):
    # references/classification/sampler.py RASampler.__iter__, restated: each index `repetitions`
    # times in a row, padded from the front to replicas * ceil(size * repetitions / replicas),
    # every replicas-th from rank on, cut to size // 256 * 256 / replicas.
    if shuffle:
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    else:
        order = list(range(size))
    per_replica = int(math.ceil(size * float(repetitions) / replicas))
    repeated = [i for i in order for _ in range(repetitions)]
    repeated += repeated[: per_replica * replicas - len(repeated)]
    return repeated[rank::replicas][: int(math.floor(size // 256 * 256 / replicas))]


def test_ra_sampler_indices_are_the_references():
    for size, replicas, shuffle, seed, repetitions in ((600, 1, True, 0, 3), (600, 3, True, 5, 3), (700, 4, False, 0, 2),
                                                      (520, 2, True, 1, 4), (100, 2, True, 0, 3)):
        for epoch in (0, 1):
            for rank in range(replicas):
                expected = _references_ra_indices(size, epoch, replicas, rank, shuffle, seed, repetitions)
                ours = _C.data.ra_sampler_indices(size, epoch, replicas, rank, shuffle, seed, repetitions)
                assert ours == expected, (size, replicas, rank, epoch)
    assert _C.data.ra_sampler_indices(100, 0, 2, 0) == []  # under 256 samples the references yield none
    with pytest.raises(ValueError, match="rank 2"):
        _C.data.ra_sampler_indices(600, 0, 2, 2)


def _one_batch(x, y):
    # The C++ fit's Python batch source: (iterator factory, batches per epoch, name).
    return (lambda epoch: iter([(x, y)]), 1, "train")


def test_fit_steps_the_references_weight_decay_groups():
    # One SGD step of the C++ fit with the split against the same step taken by hand on the groups.
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    twin = torchtl.models.resnet18(num_classes=3)
    twin.load_state_dict(start)
    twin.train()
    with torchtl.exact_mode():
        F_loss = torch.nn.functional.cross_entropy(twin(x), y)
    F_loss.backward()
    lr, wd = 0.5, 0.2
    _C.engine.fit(model._cpp, _one_batch(x, y), None, None, None, epochs=1, lr=lr, momentum=0.0, weight_decay=wd,
                  norm_weight_decay=0.0, bias_weight_decay=0.05, device="cpu", channels_last=False)
    groups = _references_weight_decay(twin, wd, 0.0, 0.05)
    decay_of = {p.data_ptr(): d for d, ps in groups for p in ps}
    names = dict(twin.named_parameters())
    for name, p in names.items():
        expected = start[name] - lr * (p.grad + decay_of[p.data_ptr()] * start[name])
        torch.testing.assert_close(model.state_dict()[name], expected, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="head_lr"):
        _C.engine.fit(model._cpp, _one_batch(x, y), None, None, None, epochs=1, head_lr=0.1, norm_weight_decay=0.0,
                      device="cpu")


def test_fit_follows_the_warmup_method_and_lr_min():
    model = torchtl.models.resnet18(num_classes=3)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 2])
    options = dict(lr_schedule="cosine", epochs=4, warmup_epochs=1, lr_warmup_method="constant", lr_warmup_decay=0.1,
                   lr_min=0.002)
    result, _ = _C.engine.fit(model._cpp, _one_batch(x, y), None, None, None, lr=0.05, device="cpu", **options)
    schedule = _C.engine.LRSchedule("cosine", 4, warmup_epochs=1, warmup_factor=0.1, warmup_method="constant",
                                    lr_min=0.002)
    assert [r.lr for r in result.epochs] == pytest.approx([schedule.lr(e, 0.05) for e in range(4)], rel=1e-12)
    assert result.epochs[0].lr == pytest.approx(0.005) and result.epochs[-1].lr > 0.002
