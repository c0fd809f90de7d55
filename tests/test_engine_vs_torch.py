"""fit's optimizers, lr schedules, skipped steps, best.pt and metrics held to torch's and
torchvision's own implementations (torch.optim, torch.optim.lr_scheduler, the references'
accuracy), not to torchtl's reference loop. Small: a 2-layer net in C++ on a few 16 px batches,
in exact mode, so each comparison is to rounding."""
import copy

import pytest
import torch
import torch.nn.functional as F

import torchtl

EPOCHS = 3


def _net(num_classes=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, num_classes))


def _batches(n=3, num_classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, num_classes, (4,), generator=g))
            for _ in range(n)]


def _torch_scheduler(optimizer, schedule, iters_per_epoch, warmup_epochs=0):
    """torch.optim.lr_scheduler's twin of fit's lr_schedule, stepped per iteration as the
    torchvision references step theirs."""
    total = (EPOCHS - warmup_epochs) * iters_per_epoch
    sched = torch.optim.lr_scheduler
    main = {
        "constant": lambda: sched.ConstantLR(optimizer, factor=1.0, total_iters=0),
        "step": lambda: sched.StepLR(optimizer, step_size=1 * iters_per_epoch, gamma=0.5),
        "cosine": lambda: sched.CosineAnnealingLR(optimizer, T_max=total),
        "poly": lambda: sched.PolynomialLR(optimizer, total_iters=total, power=0.9),
    }[schedule]()
    if not warmup_epochs:
        return main
    warmup = sched.LinearLR(optimizer, start_factor=0.01, total_iters=warmup_epochs * iters_per_epoch)
    return sched.SequentialLR(optimizer, [warmup, main], milestones=[warmup_epochs * iters_per_epoch])


CASES = {
    "adam+step": dict(optimizer="adam", lr=0.01, lr_schedule="step", step_size=1, gamma=0.5),
    "adam+cosine": dict(optimizer="adam", lr=0.01, weight_decay=1e-3, lr_schedule="cosine"),
    "adamw+poly+warmup": dict(optimizer="adamw", lr=0.01, weight_decay=0.05, lr_schedule="poly", warmup_epochs=1),
    "sgd+step": dict(optimizer="sgd", lr=0.05, momentum=0.9, lr_schedule="step", step_size=1, gamma=0.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_matches_torch_optim_and_lr_scheduler(case):
    kwargs = CASES[case]
    batches = _batches()
    net = _net()
    twin = copy.deepcopy(net)
    history = torchtl.engine.fit(net, batches, epochs=EPOCHS, device="cpu", channels_last=False, progress=False,
                                 **kwargs)
    kind = kwargs["optimizer"]
    options = dict(lr=kwargs["lr"], weight_decay=kwargs.get("weight_decay", 0.0))
    if kind == "sgd":
        optimizer = torch.optim.SGD(twin.parameters(), momentum=kwargs["momentum"], **options)
    else:
        optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](twin.parameters(), **options)
    scheduler = _torch_scheduler(optimizer, kwargs["lr_schedule"], len(batches), kwargs.get("warmup_epochs", 0))
    losses, lrs = [], []
    for _ in range(EPOCHS):
        for x, y in batches:
            lr = optimizer.param_groups[0]["lr"]
            loss = F.cross_entropy(twin(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        lrs.append(lr)  # an epoch's record holds the lr of its last step
    got = [s for e in history["epochs"] for s in e["step_losses"]]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(losses), rtol=1e-5, atol=1e-6)
    assert [e["lr"] for e in history["epochs"]] == pytest.approx(lrs, rel=1e-9)
    moved = max((a - b).abs().max().item() for a, b in zip(twin.parameters(), _net().parameters()))
    for (name, a), b in zip(net.named_parameters(), twin.parameters()):
        # Far below what training moved the weights (`moved`): a weight left untrained fails.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * max(1.0, moved), msg=name)
    assert moved > 1e-2


def test_a_nonfinite_loss_skips_exactly_its_step():
    # The run with a NaN batch in the middle ends with the weights of the run without it (SGD
    # with momentum: an applied NaN step, or a momentum buffer it touched, would show).
    batches = _batches(n=3)
    nan_batch = (torch.full((4, 3, 16, 16), float("nan")), batches[1][1])
    with_nan, without = _net(), _net()
    with pytest.warns(RuntimeWarning, match="the loss is nan at epoch 1, step 2: its optimizer step is skipped"):
        h = torchtl.engine.fit(with_nan, [batches[0], nan_batch, batches[1], batches[2]], epochs=2, device="cpu",
                               channels_last=False, optimizer="sgd", lr=0.05, momentum=0.9, progress=False)
    torchtl.engine.fit(without, batches, epochs=2, device="cpu", channels_last=False, optimizer="sgd", lr=0.05,
                       momentum=0.9, progress=False)
    assert sum(e["nonfinite_losses"] for e in h["epochs"]) == 2
    for a, b in zip(with_nan.parameters(), without.parameters()):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class _AdversarialVal:
    """A validation set whose labels are, after epoch 1's training, the model's own predictions
    (accuracy 1) and, after every later epoch, anything but them (accuracy 0): the best epoch is
    epoch 1 for certain, and its weights are noted when they are evaluated."""

    def __init__(self, model, x):
        self.model, self.x, self.calls, self.best_weights = model, x, 0, None

    def __len__(self):
        return 1

    def __iter__(self):
        with torch.no_grad():
            predicted = self.model(self.x).argmax(1)
        self.calls += 1
        if self.calls == 1:
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return iter([(self.x, predicted)])
        return iter([(self.x, (predicted + 1) % 3)])


def test_best_pt_holds_the_best_epochs_weights(tmp_path):
    net = _net()
    val = _AdversarialVal(net, _batches(n=1, seed=5)[0][0])
    history = torchtl.engine.fit(net, _batches(), val, epochs=EPOCHS, device="cpu", optimizer="sgd", lr=0.05,
                                 checkpoint_dir=tmp_path, tensorboard=False, progress=False)
    assert history["best_epoch"] == 1 and [e["val"]["acc1"] for e in history["epochs"]] == [1.0, 0.0, 0.0]
    best = torch.load(tmp_path / "best.pt")
    last = torch.load(tmp_path / "last.pt")["model"]
    assert best.keys() == val.best_weights.keys()
    assert all(torch.equal(best[k], val.best_weights[k]) for k in best)
    assert not all(torch.equal(best[k], last[k]) for k in best), "the case needs weights that moved after epoch 1"


def test_acc1_and_acc5_match_the_references_accuracy():
    # torchvision's references/classification/utils.py accuracy(output, target, topk=(1, 5)).
    def accuracy(output, target, topk):
        _, pred = output.topk(max(topk), 1, True, True)
        correct = pred.t().eq(target[None])
        return [correct[:k].flatten().sum().item() / target.numel() for k in topk]

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(4)]
    result = torchtl.engine.evaluate(net, batches, device="cpu", channels_last=False)
    with torch.no_grad():
        output = torch.cat([net(x) for x, _ in batches])
    target = torch.cat([y for _, y in batches])
    acc1, acc5 = accuracy(output, target, (1, 5))
    assert 0 < acc1 < acc5 < 1, (acc1, acc5)  # a case in which top-1, top-5 and "all" differ
    assert result["acc1"] == pytest.approx(acc1) and result["acc5"] == pytest.approx(acc5)


def test_resume_continues_exactly_with_a_schedule_dropout_and_random_augmentation(tmp_path):
    # Each of these makes a resume differ from the uninterrupted run unless last.pt brings it back:
    # the lr schedule's position (cosine), the global generator (dropout's masks) and the epoch
    # (the random crops and flips are drawn from the dataset seed, the epoch and the index).
    from test_engine import write_classification_set

    map_file = write_classification_set(tmp_path, n_per_class=4, size=20)

    def train_loader():
        ds = torchtl.data.MapDataset(map_file, transform=torchtl.data.classification_transform(train=True, size=16),
                                     seed=7)
        return torchtl.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=1, seed=3)

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))

    kwargs = dict(optimizer="sgd", lr=0.1, momentum=0.9, lr_schedule="cosine", device="cpu", channels_last=False,
                  seed=5, tensorboard=False, progress=False)
    full = net()
    h_full = torchtl.engine.fit(full, train_loader(), epochs=3, **kwargs)
    part = net()
    run = tmp_path / "run"
    # Stopped during epoch 2 of 3 (as Ctrl-C stops it): last.pt holds epoch 1 of the 3-epoch schedule.
    stopped = torchtl.engine.fit(part, train_loader(), epochs=3, checkpoint_dir=run,
                                 **dict(kwargs, progress=lambda p: p["epoch"] < 2))
    assert stopped["interrupted"] and torch.load(run / "last.pt")["epoch"] == 1
    resumed = net()
    h = torchtl.engine.fit(resumed, train_loader(), epochs=3, checkpoint_dir=run, resume=run / "last.pt", **kwargs)
    assert [e["step_losses"] for e in h["epochs"]] == [e["step_losses"] for e in h_full["epochs"]]
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
