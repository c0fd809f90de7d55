"""``make gpu-check``: everything torchtl does on CUDA, in one command for a lent GPU's few minutes.

    python tools/gpu_check.py [--budget 480] [--skip-build] [--report PATH]

Made for the GPU machine of docs/gpu_check.md (torch 2.11 / Python 3.12, pybind11, ninja, pytest,
opencv; no package registry, so no torchcodec, torchao or smp): it installs torchtl against that
machine's torch (``pip install --no-build-isolation --no-deps -e .``), builds the CMake project only
when the time left allows, and then runs, in this order and stopping at nothing:

  cuda_tests      every pytest test marked cuda (they skip without a GPU elsewhere)
  cuda_parity     each builder's forward on CUDA against the CPU, same weights and input
  fit_amp         torchtl.engine.fit on CUDA with amp fp16 and bf16, channels_last
  nvjpeg_loader   torchtl.data.DataLoader(decode_device="cuda") against the CPU loader
  predictor       the Predictor on CUDA, where this tree has one
  benchmark       resnet50 AMP + channels_last training images/s, torchtl against torchvision with
                  the same settings in the same run, and inference
  export_cuda     torchtl.export of resnet18 for CUDA (AOTInductor), with its parity record

Each step runs in its own subprocess with its own timeout (and never past the budget), and its
result is recorded whatever happens. One JSON report is written to ``$OUT/gpu_check_report.json``
when ``$OUT`` is set, else to ``gpu_check_report.json`` here; docs/gpu_check.md documents it.
Without a GPU every CUDA step is skipped with a line saying so (a dry run: ``--skip-build`` leaves
the installed torchtl alone).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT_FORMAT = "torchtl.gpu_check"
# (step, timeout in seconds): the order the issue asks for; timeouts sum to more than the budget,
# which cuts the last ones short rather than the first.
STEPS = [
    ("cuda_tests", 150),
    ("cuda_parity", 90),
    ("fit_amp", 60),
    ("nvjpeg_loader", 45),
    ("predictor", 45),
    ("benchmark", 120),
    ("export_cuda", 240),
]
_RESULT = "GPU_CHECK_RESULT "


# ---------------------------------------------------------------------------- steps (run in a subprocess)

def _cuda_or_skip():
    import torch

    if not torch.cuda.is_available():
        return {"status": "skipped", "summary": "no CUDA device: torch.cuda.is_available() is False"}
    return None


def step_cuda_tests(tmp):
    import torch

    if not torch.cuda.is_available():
        return {"status": "skipped", "summary": "no CUDA device: the cuda-marked tests would only skip"}
    junit = os.path.join(tmp, "cuda_tests.xml")
    # A test module that imports what this machine lacks (torchao, smp) must not hide the others.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors",
                           f"--junitxml={junit}", "tests"], cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return {"status": "passed" if proc.returncode == 0 else "failed", "summary": tail[-1] if tail else "",
            "details": {"returncode": proc.returncode}, "output_tail": "\n".join(tail[-40:])}


def _builders():
    import torchtl

    return ([(n, getattr(torchtl.models, n)) for n in torchtl.models.__all__ if n[0].islower()]
            + [(n, getattr(torchtl.segmentation, n)) for n in torchtl.segmentation.__all__])


def step_cuda_parity(tmp):
    import torch

    skipped = _cuda_or_skip()
    if skipped:
        return skipped
    # Relative to the largest CPU output. cuDNN's convolutions run in TF32 by default on Ampere and
    # later (torch.backends.cudnn.allow_tf32), which alone moves ResNet outputs by ~1e-3 of their range.
    tolerance = 1e-2
    results, worst = {}, 0.0
    for name, build in _builders():
        torch.manual_seed(0)
        model = build(num_classes=10 if not name.startswith(("fcn", "deeplabv3")) else 5).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            cpu = model(x)
            cpu = cpu["out"] if isinstance(cpu, dict) else cpu
            model.cuda()
            gpu = model(x.cuda())
            gpu = (gpu["out"] if isinstance(gpu, dict) else gpu).float().cpu()
        relative = ((gpu - cpu).abs().max() / cpu.abs().max()).item()
        results[name] = {"relative_error": relative, "argmax_agreement": (gpu.argmax(1) == cpu.argmax(1)).float().mean().item()}
        worst = max(worst, relative)
        del model
        torch.cuda.empty_cache()
    bad = [n for n, r in results.items() if not r["relative_error"] <= tolerance]
    return {"status": "failed" if bad else "passed",
            "summary": f"{len(results)} builders; largest relative error {worst:.2e} (tolerance {tolerance:g})"
                       + (f"; past it: {', '.join(bad)}" if bad else ""),
            "details": {"tolerance": tolerance, "builders": results}}


def _shapes(root, size=32, per_class=8, classes=("circle", "square")):
    from torchtl.tools import demo_data

    return demo_data.make_classification_set(os.path.join(root, "shapes"), classes, train_per_class=per_class,
                                             val_per_class=4, size=size, seed=0)


def step_fit_amp(tmp):
    import torch

    import torchtl
    from torchtl.tools import compare

    skipped = _cuda_or_skip()
    if skipped:
        return skipped
    maps = _shapes(tmp)
    runs, failures = {}, []
    for amp in ("fp16", "bf16"):
        torch.manual_seed(0)
        model = torchtl.models.resnet18(num_classes=2)
        train, val = compare.classification_loaders(maps["train"], maps["val"], size=32, batch_size=4, workers=2)
        try:
            history = torchtl.engine.fit(model, train, val, epochs=2, device="cuda", amp=amp, channels_last=True,
                                         progress=False, mode="scratch")
        except Exception as e:  # noqa: BLE001  (recorded; the other precision still runs)
            runs[amp] = {"error": f"{type(e).__name__}: {e}"}
            failures.append(amp)
            continue
        losses = [s for e in history["epochs"] for s in e["step_losses"]]
        finite = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
        runs[amp] = {"finite_losses": finite, "first_loss": losses[0], "last_loss": losses[-1],
                     "val_acc1": history["epochs"][-1]["val"]["acc1"],
                     "images_per_second": history["epochs"][-1]["images_per_second"],
                     "weights_on_cuda": next(model.parameters()).is_cuda}
        if not (finite and runs[amp]["weights_on_cuda"]):
            failures.append(amp)
    return {"status": "failed" if failures else "passed",
            "summary": "; ".join(f"{amp}: " + (r["error"] if "error" in r else
                                               f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}, "
                                               f"val acc {r['val_acc1']:.2f}") for amp, r in runs.items()),
            "details": runs}


def step_nvjpeg_loader(tmp):
    import torch
    from torchvision.io import write_jpeg

    from torchtl import data

    skipped = _cuda_or_skip()
    if skipped:
        return skipped
    folder = os.path.join(tmp, "jpegs")
    os.makedirs(os.path.join(folder, "a"), exist_ok=True)
    os.makedirs(os.path.join(folder, "b"), exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(16):
        image = (torch.rand(3, 60 + i, 80, generator=g) * 255).to(torch.uint8)
        write_jpeg(image, os.path.join(folder, "ab"[i % 2], f"{i}.jpg"), quality=90)
    map_file = os.path.join(tmp, "jpegs.txt")
    data.write_map_file(folder, map_file)
    ds = data.MapDataset(map_file, transform=data.classification_transform(train=False, size=48))
    cpu = list(data.DataLoader(ds, batch_size=4, num_workers=2, seed=0))
    start = time.perf_counter()
    gpu = list(data.DataLoader(ds, batch_size=4, num_workers=2, seed=0, decode_device="cuda"))
    seconds = time.perf_counter() - start
    on_cuda = all(x.is_cuda and y.is_cuda for x, y in gpu)
    same_labels = all(torch.equal(gy.cpu(), y) for (_, y), (_, gy) in zip(cpu, gpu))
    difference = max((gx.cpu() - x).abs().max().item() for (x, _), (gx, _) in zip(cpu, gpu))
    mean_difference = max((gx.cpu() - x).abs().mean().item() for (x, _), (gx, _) in zip(cpu, gpu))
    ok = on_cuda and same_labels and len(gpu) == len(cpu) and mean_difference < 0.02 and difference < 0.25
    return {"status": "passed" if ok else "failed",
            "summary": f"{len(ds)} JPEGs: batches on CUDA {on_cuda}, labels equal {same_labels}, largest pixel "
                       f"difference from the CPU loader {difference:.3f} (mean {mean_difference:.4f}; one level is ~0.017)",
            "details": {"seconds": seconds, "max_difference": difference, "mean_difference": mean_difference}}


def step_predictor(tmp):
    import torch

    import torchtl

    skipped = _cuda_or_skip()
    if skipped:
        return skipped
    if not hasattr(torchtl, "Predictor") or not hasattr(torchtl, "save_model"):
        return {"status": "skipped", "summary": "this tree has no torchtl.Predictor / torchtl.save_model yet"}
    maps = _shapes(tmp)
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=2).eval()
    path = os.path.join(tmp, "model.pt")
    torchtl.save_model(model, path, classes=["circle", "square"],
                       transform={"resize_size": 32, "crop_size": 32, "interpolation": "bilinear",
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    images = [line.split("\t")[0] for line in open(maps["val"]).read().splitlines()]
    images = [os.path.join(os.path.dirname(maps["val"]), p) for p in images]
    cpu = torchtl.Predictor(path, device="cpu").classify(images, 1)
    gpu = torchtl.Predictor(path, device="cuda").classify(images, 1)
    agree = sum(a[0].label == b[0].label for a, b in zip(cpu, gpu)) / len(images)
    return {"status": "passed" if agree == 1.0 else "failed",
            "summary": f"{len(images)} images: CUDA top-1 equals the CPU's on {agree:.0%}"}


def _images_per_second(run, batches, warmup=2):
    import torch

    for b in batches[:warmup]:
        run(b)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches[warmup:]:
        run(b)
    torch.cuda.synchronize()
    return sum(len(b[0]) for b in batches[warmup:]) / (time.perf_counter() - start)


def step_benchmark(tmp):
    import torch
    import torchvision

    import torchtl

    skipped = _cuda_or_skip()
    if skipped:
        return skipped
    batch, steps = 32, 12
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, 224, 224, generator=g), torch.randint(0, 10, (batch,), generator=g))
               for _ in range(steps)]
    out = {"batch": batch, "steps": steps, "size": 224, "amp": "fp16", "channels_last": True}
    # torchtl: the C++ loop, timed by fit itself over the epoch (its first steps included).
    torch.manual_seed(0)
    model = torchtl.models.resnet50(num_classes=10)
    history = torchtl.engine.fit(model, batches, epochs=1, device="cuda", amp="fp16", channels_last=True,
                                 progress=False, mode="scratch", lr=0.01)
    out["torchtl_train_images_per_second"] = history["epochs"][-1]["images_per_second"]
    # torchvision: the references' AMP loop with the same settings over the same batches.
    torch.manual_seed(0)
    twin = torchvision.models.resnet50(num_classes=10).cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    gpu_batches = [(x.cuda().to(memory_format=torch.channels_last), y.cuda()) for x, y in batches]

    def train_step(b):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(twin(b[0]), b[1])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    out["torchvision_train_images_per_second"] = _images_per_second(train_step, gpu_batches)
    out["train_ratio"] = out["torchtl_train_images_per_second"] / out["torchvision_train_images_per_second"]
    model = model.cuda().eval()
    twin.eval()

    def infer(net):
        def run(b):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                net(b[0])
        return run

    # Interleaved: torchtl, torchvision, torchtl, torchvision.
    rates = {"torchtl": [], "torchvision": []}
    for _ in range(2):
        rates["torchtl"].append(_images_per_second(infer(model), gpu_batches))
        rates["torchvision"].append(_images_per_second(infer(twin), gpu_batches))
    out["torchtl_inference_images_per_second"] = max(rates["torchtl"])
    out["torchvision_inference_images_per_second"] = max(rates["torchvision"])
    out["inference_ratio"] = out["torchtl_inference_images_per_second"] / out["torchvision_inference_images_per_second"]
    out["device"] = torch.cuda.get_device_name()
    return {"status": "passed",
            "summary": f"resnet50 fp16 channels_last batch {batch}: training {out['torchtl_train_images_per_second']:.0f} "
                       f"img/s torchtl vs {out['torchvision_train_images_per_second']:.0f} torchvision "
                       f"(x{out['train_ratio']:.2f}); inference {out['torchtl_inference_images_per_second']:.0f} vs "
                       f"{out['torchvision_inference_images_per_second']:.0f} (x{out['inference_ratio']:.2f})",
            "details": out}


def step_export_cuda(tmp):
    import torch

    import torchtl

    skipped = _cuda_or_skip()
    if skipped:
        return skipped
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=10)
    record = torchtl.export(model, os.path.join(tmp, "resnet18_cuda.pt2"), example_size=64, device="cuda",
                            speed_repeats=5)
    d = record["checks"]["random"]
    return {"status": "passed" if record["accepted"] else "failed",
            "summary": f"relative error vs torchtl {d['against_torchtl']['relative_error']:.2e}, vs torchvision "
                       f"{d['against_torchvision']['relative_error']:.2e}; package speed x{record['speed']['package_vs_torchtl']:.2f} torchtl",
            "details": record}


def _run_step(name):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = globals()[f"step_{name}"](tmp)
        except Exception as e:  # noqa: BLE001  (the report holds the error; the next step still runs)
            import traceback

            result = {"status": "failed", "summary": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                      "output_tail": traceback.format_exc()[-4000:]}
    print(_RESULT + json.dumps(result, default=str), flush=True)


# ---------------------------------------------------------------------------- driver

def _environment():
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    probe = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
             "'cuda_available': torch.cuda.is_available(), 'devices': [torch.cuda.get_device_name(i) for i in "
             "range(torch.cuda.device_count())]}))")
    try:
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        env.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
        env["torch_probe_error"] = str(e)
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        env["nvidia_smi"] = None
    return env


def _text(output) -> str:
    # TimeoutExpired carries bytes even from a text-mode run.
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def _command(name, argv, timeout, cwd=ROOT):
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        status = "passed" if proc.returncode == 0 else "failed"
        summary = f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        tail = (_text(e.stdout) + _text(e.stderr)).splitlines()
        status, summary = "timeout", f"stopped after {timeout:.0f} s"
    return {"name": name, "status": status, "summary": summary, "seconds": round(time.perf_counter() - start, 1),
            "output_tail": "\n".join(tail[-30:])}


def _step(name, timeout):
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--step", name], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        lines = proc.stdout.splitlines()
        found = [line for line in lines if line.startswith(_RESULT)]
        if found:
            result = json.loads(found[-1][len(_RESULT):])
        else:
            tail = (proc.stdout + proc.stderr).strip().splitlines()
            result = {"status": "failed", "summary": f"the step's process ended with status {proc.returncode} "
                                                     "and no result (a crash?)", "output_tail": "\n".join(tail[-40:])}
    except subprocess.TimeoutExpired:
        result = {"status": "timeout", "summary": f"stopped after {timeout:.0f} s"}
    return {"name": name, **result, "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything (default: 8 minutes)")
    parser.add_argument("--skip-build", action="store_true", help="use the torchtl already built here")
    parser.add_argument("--report", help="report path (default: $OUT/gpu_check_report.json, else ./gpu_check_report.json)")
    parser.add_argument("--only", help="comma-separated steps to run")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        _run_step(args.step)
        return 0
    deadline = time.monotonic() + args.budget
    report_path = args.report or os.path.join(os.environ.get("OUT") or os.getcwd(), "gpu_check_report.json")
    report = {"format": REPORT_FORMAT, "format_version": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "budget_seconds": args.budget, "environment": _environment(), "steps": []}

    def record(step):
        report["steps"].append(step)
        print(f"[{step['status']:>7}] {step['name']} ({step.get('seconds', 0):.0f} s): {step.get('summary', '')}",
              flush=True)
        with open(report_path, "w") as f:  # rewritten after every step: a cut-off run keeps what it did
            json.dump(report, f, indent=1, default=str)

    def left():
        return deadline - time.monotonic()

    if args.skip_build:
        record({"name": "install", "status": "skipped", "summary": "--skip-build: the torchtl built here is used"})
        record({"name": "cmake_build", "status": "skipped", "summary": "--skip-build"})
    else:
        record(_command("install", [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                                    "-e", "."], min(300, left())))
        # The CMake build compiles csrc/ again; only with time to spare for the steps after it.
        if left() > 420:
            prefix = subprocess.run([sys.executable, "-c", "import torch; print(torch.utils.cmake_prefix_path)"],
                                    capture_output=True, text=True).stdout.strip()
            configure = _command("cmake_configure", ["cmake", "-S", ".", "-B", "build/gpu_check",
                                                     f"-DCMAKE_PREFIX_PATH={prefix}", f"-DTORCHTL_TEST_PYTHON={sys.executable}"],
                                 min(60, left() - 360))
            record(configure if configure["status"] != "passed" else
                   _command("cmake_build", ["cmake", "--build", "build/gpu_check", f"-j{os.cpu_count() or 2}"],
                            max(1, left() - 360)))
        else:
            record({"name": "cmake_build", "status": "skipped",
                    "summary": f"{left():.0f} s left after the install; the CMake build needs the time of the steps"})
    only = set(args.only.split(",")) if args.only else None
    for name, timeout in STEPS:
        if only is not None and name not in only:
            continue
        if left() < 5:
            record({"name": name, "status": "timeout", "summary": "the budget was spent before this step"})
            continue
        record(_step(name, min(timeout, left())))
    counts = {}
    for step in report["steps"]:
        counts[step["status"]] = counts.get(step["status"], 0) + 1
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["counts"] = counts
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"report: {report_path} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})")
    return 1 if counts.get("failed") or counts.get("timeout") else 0


if __name__ == "__main__":
    sys.exit(main())
