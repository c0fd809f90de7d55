"""Data-parallel training on torch.distributed: 2 CPU ranks (gloo) launched by torchrun on 127.0.0.1
give what one process gives with twice the batch; only rank 0 writes; resume works."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DistributedSampler

import torchtl
from torchtl import data

from distributed_worker import build
from test_engine import write_classification_set, write_segmentation_set

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 240  # seconds a torchrun launch may take before the test fails (it never waits forever)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, nproc=2, cwd=None):
    """Runs ``torchrun --nproc_per_node nproc ARGS`` with its rendezvous on 127.0.0.1."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd)
    assert out.returncode == 0, f"torchrun failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    train = write_classification_set(root)  # 16 images
    val = root / "val.txt"
    val.write_text("".join(train.read_text().splitlines(keepends=True)[:15]))  # odd: unequal val shards
    return train, val


def loader_indices(loader, epoch):
    stream = loader._cpp.epoch(epoch)
    out = []
    while (batch := stream.next()) is not None:
        out.append(list(batch[2]))
    return out


@pytest.mark.parametrize("n, replicas", [(16, 2), (15, 2), (10, 3), (2, 3)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_shards_like_distributed_sampler(maps, n, replicas, shuffle):
    train, _ = maps
    lines = train.read_text().splitlines(keepends=True)[:n]
    small = train.parent / f"first{n}.txt"
    small.write_text("".join(lines))
    ds = data.MapDataset(small)
    whole = data.DataLoader(ds, batch_size=n, shuffle=shuffle, num_workers=0, seed=5)
    for epoch in (0, 1):
        order = loader_indices(whole, epoch)[0]
        shards = []
        for rank in range(replicas):
            sharded = data.DataLoader(ds, batch_size=2, shuffle=shuffle, num_workers=1, seed=5,
                                      num_replicas=replicas, rank=rank)
            # DistributedSampler's padding and stride over the same epoch order.
            sampler = DistributedSampler(order, num_replicas=replicas, rank=rank, shuffle=False)
            expected = [order[i] for i in sampler]
            got = loader_indices(sharded, epoch)
            assert [i for b in got for i in b] == expected
            assert len(sharded) == len(got) == -(-len(expected) // 2)
            shards.append(expected)
        assert len({len(s) for s in shards}) == 1  # equal steps on every rank
        assert set(i for s in shards for i in s) == set(range(n))


def test_loader_sharding_errors(maps):
    ds = data.MapDataset(maps[0])
    with pytest.raises(ValueError, match="rank must be in"):
        data.DataLoader(ds, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be positive"):
        data.DataLoader(ds, num_replicas=0)


def single_process(maps, batch_size, epochs, device="cpu"):
    model, train_loader, val_loader = build("classification", *maps, batch_size)
    history = torchtl.engine.fit(model, train_loader, val_loader, mode="feature_extractor", optimizer="sgd", lr=0.05,
                                 momentum=0.9, epochs=epochs, device=device, progress=False)
    return model, history, torchtl.engine.evaluate(model, val_loader, device=device)


def assert_same_run(ranks, model, history, epochs, rtol=1e-5):
    """Every rank ends with the single process's weights, history and evaluation, within rounding."""
    for r in ranks:
        assert r["world_size"] == 2
        for k, v in model.state_dict().items():
            torch.testing.assert_close(r["state_dict"][k], v, rtol=rtol, atol=rtol / 10, msg=k)
        h = r["history"]
        assert [e["epoch"] for e in h["epochs"]] == list(range(epochs - len(h["epochs"]) + 1, epochs + 1))
        for got, want in zip(h["epochs"], history["epochs"][-len(h["epochs"]):]):
            assert got["images"] == want["images"] == 16
            torch.testing.assert_close(torch.tensor(got["step_losses"]), torch.tensor(want["step_losses"]),
                                       rtol=rtol, atol=rtol / 10)
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=rtol)
            assert got["train_acc"] == want["train_acc"]
            assert got["val"]["images"] == 15  # disjoint validation shards: no sample twice
            assert got["val"]["confusion"] == want["val"]["confusion"]
            assert got["val"]["loss"] == pytest.approx(want["val"]["loss"], rel=rtol)
        assert torch.equal(r["evaluate"]["confusion"], ranks[0]["evaluate"]["confusion"])
        assert r["evaluate"]["loss"] == pytest.approx(ranks[0]["evaluate"]["loss"], rel=1e-12)


def run_worker(maps, out, *args):
    """Trains over 2 ranks with distributed_worker.py (ARGS are its options), each rank saving what it
    ended with to OUT/rank{r}.pt, and returns those."""
    out.mkdir(exist_ok=True)
    torchrun([os.path.join(HERE, "distributed_worker.py"), "--train", str(maps[0]), "--val", str(maps[1]), "--out",
              str(out), *args])
    return [torch.load(out / f"rank{r}.pt", weights_only=False, map_location="cpu") for r in range(2)]


def test_two_ranks_equal_one_process_with_twice_the_batch_and_resume(maps, tmp_path):
    # Each rank is given its own checkpoint dir: only rank 0's may be written to.
    run = tmp_path / "run_rank"
    ranks = run_worker(maps, tmp_path / "out", "--batch-size", "4", "--epochs", "2", "--checkpoint-dir", f"{run}{{rank}}")
    model, history, evaluated = single_process(maps, batch_size=8, epochs=2)
    assert_same_run(ranks, model, history, epochs=2)
    assert torch.equal(ranks[0]["evaluate"]["confusion"], evaluated["confusion"])
    assert ranks[0]["evaluate"]["loss"] == pytest.approx(evaluated["loss"], rel=1e-5)
    assert {"best.pt", "history.json", "last.pt", "metrics.csv"} <= set(os.listdir(f"{run}0"))
    assert not os.path.exists(f"{run}1")
    ckpt = torch.load(f"{run}0/last.pt")
    assert ckpt["epoch"] == 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ckpt["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)

    # Resume: every rank loads rank 0's last.pt and goes on to epoch 3.
    ranks = run_worker(maps, tmp_path / "out", "--batch-size", "4", "--epochs", "3", "--checkpoint-dir",
                       f"{run}{{rank}}", "--resume", f"{run}0/last.pt")
    model, history, _ = single_process(maps, batch_size=8, epochs=3)
    # The history continues the run folder's history.json: rank 0's holds epochs 1-2; rank 1 was given a
    # folder of its own (to show it writes nothing), with no earlier history to continue.
    assert [len(r["history"]["epochs"]) for r in ranks] == [3, 1]
    assert [e["epoch"] for e in json.loads((tmp_path / "run_rank0" / "history.json").read_text())["epochs"]] == [1, 2, 3]
    assert_same_run(ranks, model, history, epochs=3)
    assert torch.load(f"{run}0/last.pt")["epoch"] == 3
    assert not os.path.exists(f"{run}1")


def test_python_twin_with_ddp_matches_the_cpp_loop(maps, tmp_path):
    ranks = run_worker(maps, tmp_path / "out", "--batch-size", "4", "--epochs", "2", "--checkpoint-dir",
                       str(tmp_path / "run"), "--engine", "reference")
    model, history, _ = single_process(maps, batch_size=8, epochs=2)
    assert_same_run(ranks, model, history, epochs=2, rtol=1e-4)  # the C++ and Python loops agree to 1e-4
    assert {"best.pt", "history.json", "last.pt", "metrics.csv"} <= set(os.listdir(tmp_path / "run"))


def test_torchrun_cli_train(tmp_path):
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(("ants", "bees")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(5):
            img = (torch.rand(3, 32, 32, generator=g) * 80).to(torch.uint8)
            img[c] += 120
            write_png(img, str(tmp_path / "images" / name / f"{i}.png"))
    run = tmp_path / "run"
    result = torchrun(["-m", "torchtl", "train", "classification", "--train", str(tmp_path / "images"), "--arch",
                       "resnet18", "--epochs", "2", "--batch-size", "2", "--size", "32", "--device", "cpu", "--out",
                       str(run), "--sync-bn", "--quiet"], cwd=tmp_path)
    assert result.stdout.count("epoch 2:") == 1  # rank 0 alone prints
    assert set(os.listdir(run)) - {"tensorboard"} == {"config.json", "history.json", "last.pt", "metrics.csv", "train.txt",
                                                      "train_classes.txt"}
    history = json.loads((run / "history.json").read_text())
    # 10 images, batch 2 on each of 2 ranks, drop_last: 2 steps of 4 images, the whole run's count.
    assert [e["images"] for e in history["epochs"]] == [8, 8]
    assert len(history["epochs"][0]["step_losses"]) == 2


UNEQUAL_WORKER = """
import torch
import torchtl

rank = int(__import__("os").environ["RANK"])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
batches = [(torch.randn(2, 3, 2, 2), torch.tensor([0, 1]))] * (2 + rank)  # a caller's unequal shards
try:
    torchtl.engine.fit(model, batches, device="cpu", progress=False)
except ValueError as e:
    print(f"rank {rank}: {e}")
"""


def test_unequal_caller_sharded_batches_raise_on_every_rank(tmp_path):
    # A Python iterable is the caller's to shard; ranks taking unequal steps would wait for each other
    # in the gradient all-reduce forever, so fit refuses on every rank before the first step.
    script = tmp_path / "unequal.py"
    script.write_text(UNEQUAL_WORKER)
    result = torchrun([str(script)])
    for rank in range(2):
        assert f"rank {rank}: data-parallel training needs as many batches per epoch on every rank" in result.stdout
        assert "between 2 and 3" in result.stdout


@pytest.fixture(scope="module")
def seg_maps(tmp_path_factory):
    seg = write_segmentation_set(tmp_path_factory.mktemp("dist_seg"), n=8)
    return seg, seg


def finetune(maps, task, batch_size, sync_bn, epochs=1, device="cpu", channels_last=True):
    """The run the sync_bn ranks are compared with: one process, batch norm training, 2 steps of lr 0.01 at 64 px."""
    model, train, val = build(task, *maps, batch_size, size=64)
    history = torchtl.engine.fit(model, train, val, task=task, mode="finetune", optimizer="sgd", lr=0.01,
                                 momentum=0.9, epochs=epochs, device=device, channels_last=channels_last,
                                 sync_bn=sync_bn, progress=False)
    return model.cpu(), history


def test_sync_bn_in_one_process_is_batch_norm(maps):
    plain_model, plain = finetune(maps, "classification", 8, sync_bn=False)
    model, history = finetune(maps, "classification", 8, sync_bn=True)
    for k, v in plain_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert history["epochs"][0]["step_losses"] == plain["epochs"][0]["step_losses"]
    assert {**history["epochs"][0]["val"], "seconds": 0} == {**plain["epochs"][0]["val"], "seconds": 0}
    # The model holds its own BatchNorm2d layers again: the C++ forward runs and folds them in eval.
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(model.eval()(x), plain_model.eval()(x))


def test_sync_bn_needs_a_batch_norm_that_trains(maps):
    from torchvision.ops import FrozenBatchNorm2d

    _, train, _ = build("classification", *maps, 8)
    frozen = torchtl.models.resnet18(num_classes=2, norm_layer=FrozenBatchNorm2d)
    for engine in (torchtl.engine, torchtl.reference):
        with pytest.raises(ValueError, match="sync_bn=True, but no BatchNorm2d of the model trains in finetune mode"):
            engine.fit(frozen, train, mode="finetune", sync_bn=True, device="cpu", progress=False)
        # feature_extractor freezes every batch norm of a ResNet: only fc trains.
        with pytest.raises(ValueError, match="trains in feature_extractor mode"):
            engine.fit(torchtl.models.resnet18(num_classes=2), train, mode="feature_extractor", sync_bn=True,
                       device="cpu", progress=False)


def test_sync_bn_follows_a_model_built_with_sync_batch_norm():
    from torchtl.engine import _sync_bn

    group = object()  # stands for a process group of 2 ranks: _sync_bn only asks whether there is one
    synced = torchtl.models.resnet18(num_classes=2, norm_layer=torch.nn.SyncBatchNorm)
    assert _sync_bn(synced, None, group) is True
    assert _sync_bn(synced, None, None) is False  # one process: SyncBatchNorm is BatchNorm2d
    assert _sync_bn(torchtl.models.resnet18(num_classes=2), None, group) is False
    with pytest.raises(ValueError, match="sync_bn=False, but the model's norm layers are torch.nn.SyncBatchNorm"):
        _sync_bn(synced, False, group)
    synced.bn1 = torch.nn.BatchNorm2d(64)
    with pytest.raises(ValueError, match="mixes torch.nn.SyncBatchNorm with other batch norm layers"):
        _sync_bn(synced, None, group)
    assert _sync_bn(synced, True, group) is True


def sync_bn_ranks(maps, tmp_path, task, batch_size, sync_bn, device="cpu"):
    out = tmp_path / ("sync" if sync_bn else "local")
    return run_worker(maps, out, "--batch-size", str(batch_size), "--epochs", "1", "--checkpoint-dir", str(out / "run"),
                      "--task", task, "--mode", "finetune", "--lr", "0.01", "--size", "64", "--device", device,
                      *(["--sync-bn"] if sync_bn else []))


def state_difference(state_dict, model):
    return max((state_dict[k].double() - v.double()).abs().max().item() for k, v in model.state_dict().items()
               if v.is_floating_point())


def losses(history):
    return [s for e in history["epochs"] for s in e["step_losses"]] + [e["val"]["loss"] for e in history["epochs"]]


def assert_close_runs(ranks, model, history, exact, exact_history):
    """Every rank ends as near the single process as rounding allows. Batch norm over a few small images
    amplifies rounding within two steps, so the yardstick is how far the same process moves in exact
    mode (other summation orders), give or take a factor of 10."""
    rounding = state_difference(exact.state_dict(), model)
    want = losses(history)
    tolerances = [10 * abs(e - w) + 1e-5 * abs(w) for w, e in zip(want, losses(exact_history))]
    for r in ranks:
        assert state_difference(r["state_dict"], model) <= 10 * rounding
        for got, w, tolerance in zip(losses(r["history"]), want, tolerances):
            assert got == pytest.approx(w, abs=tolerance)
    return rounding


@pytest.mark.parametrize("task, batch_size", [("segmentation", 2), ("classification", 4)])
def test_sync_bn_two_ranks_stay_close_to_one_process_with_twice_the_batch(maps, seg_maps, tmp_path, task, batch_size):
    maps = seg_maps if task == "segmentation" else maps
    ranks = sync_bn_ranks(maps, tmp_path, task, batch_size, sync_bn=True)
    model, history = finetune(maps, task, 2 * batch_size, sync_bn=False)
    rounding = assert_close_runs(ranks, model, history, *finetune(maps, task, 2 * batch_size, sync_bn=False,
                                                                   channels_last=False))
    if task == "classification":
        # Without it each rank normalises with its own half of the batch: far from the single process.
        local = sync_bn_ranks(maps, tmp_path, task, batch_size, sync_bn=False)
        assert state_difference(local[0]["state_dict"], model) > 100 * rounding


# nccl: the same runs with each rank on its own GPU. Two GPUs are needed; with fewer these skip.
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2 or not torch.distributed.is_nccl_available(),
                              reason="nccl data-parallel training needs 2 CUDA devices")


@pytest.mark.cuda
@two_gpus
def test_nccl_two_ranks_equal_one_process_with_twice_the_batch(maps, tmp_path):
    ranks = run_worker(maps, tmp_path / "out", "--batch-size", "4", "--epochs", "2", "--checkpoint-dir",
                       str(tmp_path / "run"), "--device", "cuda")
    model, history, _ = single_process(maps, batch_size=8, epochs=2, device="cuda")
    # cuDNN and nccl sum in their own orders: rounding differs more than on the CPU.
    assert_same_run(ranks, model.cpu(), history, epochs=2, rtol=1e-4)


@pytest.mark.cuda
@two_gpus
def test_nccl_sync_bn_two_ranks_stay_close_to_one_process_with_twice_the_batch(seg_maps, tmp_path):
    ranks = sync_bn_ranks(seg_maps, tmp_path, "segmentation", 2, sync_bn=True, device="cuda")
    model, history = finetune(seg_maps, "segmentation", 4, sync_bn=False, device="cuda")
    assert_close_runs(ranks, model, history, *finetune(seg_maps, "segmentation", 4, sync_bn=False, device="cuda",
                                                        channels_last=False))
