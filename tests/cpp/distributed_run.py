"""A data-parallel run of a C++ training program under torchrun, run by ctest (TORCHTL_TEST_PYTHON):

    distributed_run.py PROGRAM DATA WEIGHTS WORK [DEVICE]

PROGRAM (examples/cpp/transfer_learning) trains the head of WEIGHTS (a resnet18 state dict) on DATA
(make_image_data's train.txt/val.txt) in feature_extractor mode: 2 CPU ranks (gloo) with batch 2, then
one process with batch 4 and one with batch 2, each in its own folder under WORK. As in
tests/test_distributed.py: both ranks finish, rank 0 alone reports and writes its run folder, and the
2 ranks end with the weights of one process with twice the batch (not those of one with the same batch).
DEVICE cuda runs the ranks on one GPU each, reducing over NCCL; with fewer than 2 GPUs it exits with
SKIP (77), which ctest reports as skipped.
"""
import os
import re
import shutil
import socket
import subprocess
import sys

import torch

SKIP = 77
TIMEOUT = 240  # seconds a run may take before the test fails (it never waits forever)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    print(out.stdout + out.stderr)
    assert out.returncode == 0, f"{cmd[:6]}... exited with {out.returncode}"
    return out.stdout


def weights(folder):
    return torch.load(os.path.join(folder, "last.pt"), map_location="cpu")["model"]


def main(program, data, pretrained, work, device="cpu"):
    if device == "cuda" and torch.cuda.device_count() < 2:
        print("skipped: NCCL data-parallel runs need 2 CUDA devices")
        sys.exit(SKIP)
    # cuDNN and NCCL sum in their own orders: rounding differs more than on the CPU.
    rtol, atol = (1e-4, 1e-5) if device == "cuda" else (1e-5, 1e-6)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    common = ["--train", os.path.join(data, "train.txt"), "--val", os.path.join(data, "val.txt"), "--weights",
              pretrained, "--num-classes", "2", "--mode", "feature_extractor", "--size", "32", "--epochs", "2",
              "--workers", "1", "--device", device, "--lr", "0.05", "--seed", "3"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"

    # Each rank is given a run folder of its own (RUN0, RUN1) to show that rank 1 writes nothing.
    ranks = os.path.join(work, "rank")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
              "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "--no-python",
              "sh", "-c", 'exec "$0" "$@" --output-dir "$RUN$RANK"', program, *common, "--batch-size", "2"]
    out = run(launch, dict(env, RUN=ranks))
    assert "in each of 2 processes (data-parallel)" in out
    assert out.count("epoch 2/2  train loss") == 1, "rank 0 alone reports"
    assert sorted(os.listdir(ranks + "0")) == ["best.pt", "last.pt"]
    assert not os.path.exists(ranks + "1"), "rank 1 wrote a run folder"

    single = os.path.join(work, "batch4")
    single_out = run([program, *common, "--batch-size", "4", "--output-dir", single], env)
    same_batch = os.path.join(work, "batch2")
    run([program, *common, "--batch-size", "2", "--output-dir", same_batch], env)

    weights_got, weights_want, other = weights(ranks + "0"), weights(single), weights(same_batch)
    assert weights_got.keys() == weights_want.keys()
    for k in weights_got:
        torch.testing.assert_close(weights_got[k], weights_want[k], rtol=rtol, atol=atol, msg=k)
    assert not torch.allclose(weights_got["fc.weight"], other["fc.weight"], rtol=1e-3, atol=1e-4), \
        "2 ranks with batch 2 took the steps of one process with batch 2"

    # The reports agree too: each epoch's (the whole run's 8 images, not rank 0's 4) and the final
    # evaluation of best.pt, every rank's share of the validation set summed.
    numbers = re.compile(r"^epoch (\d+)/2  train loss ([0-9.]+)  acc ([0-9.]+)  \((\d+) images.*val loss ([0-9.]+)  "
                         r"acc ([0-9.]+)$|^best.pt on .*: loss ([0-9.]+)  acc@1 ([0-9.]+)  \((\d+) images\)$", re.M)
    got, want = [[[float(x) for x in m.groups() if x is not None] for m in numbers.finditer(text)]
                 for text in (out, single_out)]
    assert len(got) == len(want) == 3 and got[0][3] == 8, got
    for g, w in zip(got, want):  # printed with 4 decimals
        assert len(g) == len(w) and all(abs(a - b) <= 2e-4 for a, b in zip(g, w)), (g, w)
    print(f"2 ranks with batch 2 = 1 process with batch 4: {len(weights_got)} tensors within 1e-5, and the reports")


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    main(*sys.argv[1:])
