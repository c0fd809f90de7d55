"""C++ training loop (torchtl.engine) vs its Python twin (torchtl.reference), same run.

Both loops get the same starting weights, the same torchtl DataLoader settings (so the same
batches) and the same optimizer; the Python twin trains the torchvision model. Prints ratios:

0. the fast path: images/s of torchtl.engine.fit with default options and with amp="bf16", and of
   torch.compile of torchvision's model, each as a ratio to torchvision's default execution (the
   Python twin with channels_last=False, amp off), resnet18 (batch 16, 128 px); then each means on
   its own, on torchvision's model and a fixed batch (no loader): channels_last, and channels_last
   with bf16 autocast, as ratios to the contiguous fp32 step;
1. images/s of one epoch, C++ / Python, both on the fast path: resnet18 (batch 16, 112 px) and deeplabv3_resnet50
   (batch 2, 256 px);
2. feature_extractor for 15 epochs: C++ with the feature cache vs the Python twin without it,
   with both final validation accuracies (target: >= 5x faster, same accuracy);
3. peak resident memory of one feature_extractor vs one finetune epoch (each in a fresh process).

    python benchmarks/train.py                 # everything, CPU (CUDA when present)
    python benchmarks/train.py --only loop
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torchvision.io import write_png

import torchtl
from torchtl import data

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "bench_train")


def make_set(name, n, size, classes=2, segmentation=False):
    folder = os.path.join(ROOT, name)
    map_path = os.path.join(folder, "map.txt")
    if os.path.exists(map_path):
        return map_path
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(n):
        c = i % classes
        img = (torch.rand(3, size, size, generator=g) * 100).to(torch.uint8)
        img[c % 3] += 100
        write_png(img, os.path.join(folder, f"{i}.png"))
        if segmentation:
            mask = torch.zeros(1, size, size, dtype=torch.uint8)
            mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1 + c
            write_png(mask, os.path.join(folder, f"{i}_mask.png"))
            lines.append(f"{i}.png\t{i}_mask.png")
        else:
            lines.append(f"{i}.png\t{c}")
    with open(map_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return map_path


def loader(map_path, batch_size, size, segmentation=False, shuffle=True):
    if segmentation:
        ds = data.SegmentationMapDataset(map_path, transform=data.segmentation_transform(train=False, base_size=size,
                                                                                        crop_size=size))
    else:
        ds = data.MapDataset(map_path, transform=data.classification_transform(train=False, size=size, resize_size=size))
    return data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=2, seed=0)


def pair(arch, num_classes):
    torch.manual_seed(0)
    if arch.startswith("resnet"):
        m = getattr(torchtl.models, arch)(num_classes=num_classes)
    else:
        m = getattr(torchtl.segmentation, arch)(num_classes=num_classes, aux_loss=True)
    return m, m.to_torchvision()


def images_per_second(history):
    e = history["epochs"][-1]
    return e["images"] / e["seconds"]


def bench_fast_path(device, arch="resnet18", batch=16, size=128, n=96):
    path = make_set(f"{arch}_{size}", n, size, classes=2)
    m, tv = pair(arch, 2)
    weights = {k: v.clone() for k, v in m.state_dict().items()}
    kw = dict(optimizer="sgd", lr=0.001, momentum=0.9, epochs=2, device=device, progress=False)

    def fresh_twin():
        twin = m.to_torchvision()
        twin.load_state_dict(weights)
        return twin

    def fresh_model():
        m.load_state_dict(weights)
        return m

    runs = {}
    # Epoch 1 warms each up (and compiles); epoch 2 is measured.
    runs["torchvision"] = images_per_second(torchtl.reference.fit(fresh_twin(), loader(path, batch, size),
                                                                  channels_last=False, **kw))
    compiled = fresh_twin()
    compiled.compile()
    start = time.perf_counter()
    runs["compile"] = images_per_second(torchtl.reference.fit(compiled, loader(path, batch, size),
                                                              channels_last=False, **kw))
    compile_s = time.perf_counter() - start
    runs["torchtl"] = images_per_second(torchtl.engine.fit(fresh_model(), loader(path, batch, size), **kw))
    bf16 = device.startswith("cuda") or torchtl.cpu_supports_bf16()
    if bf16:
        runs["torchtl bf16"] = images_per_second(torchtl.engine.fit(fresh_model(), loader(path, batch, size),
                                                                    amp="bf16", **kw))
    base = runs["torchvision"]
    print(f"\nfast path: {arch} b{batch} {size}px training, images/s (ratio to torchvision's default); "
          f"load average {os.getloadavg()[0]:.1f}; compile run {compile_s:.0f} s in all")
    for name, ips in runs.items():
        print(f"  {name:<14} {ips:8.1f} img/s  {ips / base:5.2f}x")
    if not bf16:
        print("  torchtl bf16   n/a (CPU without AVX-512 BF16 or AMX)")


def bench_means(device, arch="resnet18", batch=16, size=128, steps=6):
    """What channels_last and bf16 autocast give torchvision's own model, each on its own: training
    steps (forward, loss, backward, SGD step) on one fixed batch, after two warm-up steps."""
    import torchvision

    def images_per_second(channels_last, bf16):
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, num_classes=2).to(device)
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, 2, (batch,), device=device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)

        def step():
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(2):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        return batch * steps / (time.perf_counter() - start)

    base = images_per_second(False, False)
    print(f"\nmeans on their own: torchvision {arch} b{batch} {size}px training steps, fixed batch; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  {'contiguous fp32':<20} {base:8.1f} img/s  1.00x")
    rows = [("channels_last", True, False)]
    if device.startswith("cuda") or torchtl.cpu_supports_bf16():
        rows.append(("channels_last + bf16", True, True))
    for name, channels_last, bf16 in rows:
        ips = images_per_second(channels_last, bf16)
        print(f"  {name:<20} {ips:8.1f} img/s  {ips / base:5.2f}x")


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_loops(device):
    rows = []
    for arch, batch, size, n, task in (("resnet18", 16, 112, 96, "classification"),
                                       ("deeplabv3_resnet50", 2, 256, 8, "segmentation")):
        seg = task == "segmentation"
        path = make_set(f"{arch}_{size}", n, size, classes=2, segmentation=seg)
        m, tv = pair(arch, 3 if seg else 2)
        kw = dict(task=task, optimizer="sgd", lr=0.001, momentum=0.9, epochs=2, device=device, progress=False)
        # Epoch 1 warms both up; epoch 2 is measured. Interleave: Python, C++.
        py = torchtl.reference.fit(tv, loader(path, batch, size, seg), **kw)
        cpp = torchtl.engine.fit(m, loader(path, batch, size, seg), **kw)
        rows.append((f"{arch} b{batch} {size}px", images_per_second(py), images_per_second(cpp)))
    print(f"\n{'loop':<28} {'Python img/s':>12} {'C++ img/s':>10} {'C++/Python':>10}")
    for name, py, cpp in rows:
        print(f"{name:<28} {py:>12.1f} {cpp:>10.1f} {cpp / py:>9.2f}x")


def bench_feature_extractor(device):
    train = make_set("fe_train_112", 96, 112)
    val = make_set("fe_val_112", 32, 112)
    m, tv = pair("resnet18", 2)
    kw = dict(mode="feature_extractor", optimizer="adam", lr=1e-3, epochs=15, device=device, progress=False)
    start = time.perf_counter()
    py = torchtl.reference.fit(tv, loader(train, 16, 112), loader(val, 16, 112, shuffle=False), **kw)
    py_s = time.perf_counter() - start
    start = time.perf_counter()
    cpp = torchtl.engine.fit(m, loader(train, 16, 112), loader(val, 16, 112, shuffle=False), **kw)
    cpp_s = time.perf_counter() - start
    print(f"\nfeature_extractor, resnet18, 15 epochs, 96 train / 32 val images at 112 px")
    print(f"  Python twin (no cache): {py_s:7.2f} s   val acc1 {py['epochs'][-1]['val']['acc1']:.4f}")
    print(f"  C++ (feature cache={cpp['feature_cache']}): {cpp_s:7.2f} s   val acc1 {cpp['epochs'][-1]['val']['acc1']:.4f}")
    print(f"  speedup {py_s / cpp_s:.1f}x")


def peak_rss_child(mode, device):
    train = make_set("fe_train_112", 96, 112)
    m, _ = pair("resnet18", 2)
    torchtl.engine.fit(m, loader(train, 16, 112), mode=mode, optimizer="sgd", lr=0.001, epochs=1, device=device,
                       cache_features=False, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({"peak_mib": peak}))


def bench_memory(device):
    peaks = {}
    for mode in ("feature_extractor", "finetune"):
        out = subprocess.run([sys.executable, __file__, "--child-mode", mode, "--device", device], check=True,
                             capture_output=True, text=True).stdout
        peaks[mode] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
    what = "peak CUDA memory allocated" if device.startswith("cuda") else "peak resident memory (process)"
    print(f"\n{what}, resnet18 b16 112px, one epoch:")
    print(f"  finetune {peaks['finetune']:.0f} MiB, feature_extractor {peaks['feature_extractor']:.0f} MiB, "
          f"ratio {peaks['feature_extractor'] / peaks['finetune']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=["fast_path", "loop", "feature_extractor", "memory"])
    parser.add_argument("--child-mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_mode:
        return peak_rss_child(args.child_mode, args.device)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    if args.only in (None, "fast_path"):
        bench_fast_path(args.device)
        bench_means(args.device)
    if args.only in (None, "loop"):
        bench_loops(args.device)
    if args.only in (None, "feature_extractor"):
        bench_feature_extractor(args.device)
    if args.only in (None, "memory"):
        bench_memory(args.device)


if __name__ == "__main__":
    main()
