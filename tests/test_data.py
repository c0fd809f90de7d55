"""torchtl.data against torchvision: decoding, transforms, datasets, the threaded loader, bad input."""
import gc
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, encode_jpeg, read_file, write_png
from torchvision.transforms import v2

import torchtl
from torchtl import data

MEAN, STD = data.IMAGENET_MEAN, data.IMAGENET_STD

# torchvision 0.29 deprecates its Python decode/encode helpers (in favour of TorchCodec); the
# tests use them only as the reference. torchtl calls the C++ ops, which do not warn.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def _rgb(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    # Smooth structure plus noise, so resizing and cropping errors would show.
    y = torch.linspace(0, 1, h).view(h, 1)
    x = torch.linspace(0, 1, w).view(1, w)
    base = torch.stack([x * 255 + 0 * y, y * 255 + 0 * x, (x + y) * 127])
    return (base + torch.randint(-20, 21, (3, h, w), generator=g)).clamp(0, 255).to(torch.uint8)


def _write_jpeg(path, image):
    with open(path, "wb") as f:
        f.write(encode_jpeg(image, quality=90).numpy().tobytes())


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """An ImageFolder tree with JPEG, gray/RGBA/palette/16-bit PNG and an EXIF-rotated JPEG."""
    root = tmp_path_factory.mktemp("tree")
    specs = {
        "cat": [("a.jpg", 48, 64), ("b.png", 70, 50), ("sub dir/c.jpg", 64, 64)],
        "dog": [("d.JPEG", 40, 90), ("e.png", 64, 48)],
        "eel": [("f.png", 50, 60), ("g.png", 61, 47), ("h.png", 47, 62), ("i.jpg", 65, 51)],
    }
    for cls, files in specs.items():
        for i, (name, h, w) in enumerate(files):
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            img = _rgb(h, w, seed=hash((cls, name)) % 1000)
            if name.lower().endswith((".jpg", ".jpeg")):
                _write_jpeg(path, img)
            else:
                write_png(img, str(path))
    # The special formats, all in class "eel".
    arr = _rgb(50, 60, 1).permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0], "L").save(root / "eel" / "f.png")  # gray
    Image.fromarray(np.dstack([_rgb(61, 47, 2).permute(1, 2, 0).numpy(), np.full((61, 47), 128, np.uint8)]),
                    "RGBA").save(root / "eel" / "g.png")
    pal = Image.fromarray((np.arange(47 * 62).reshape(47, 62) % 17).astype(np.uint8), "P")
    pal.putpalette([(i * 53) % 256 for i in range(768)])
    pal.save(root / "eel" / "h.png")
    import cv2

    cv2.imwrite(str(root / "eel" / "f16.png"), (np.random.RandomState(0).rand(33, 45, 3) * 65535).astype(np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(_rgb(51, 65, 3).permute(1, 2, 0).numpy()).save(root / "eel" / "i.jpg", exif=exif, quality=90)
    (root / "eel" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def map_file(tree, tmp_path_factory):
    path = tmp_path_factory.mktemp("maps") / "train.txt"
    data.write_map_file(tree, path)
    return path


def _reference_decode(path):
    image = decode_image(read_file(str(path)), ImageReadMode.RGB, apply_exif_orientation=True)
    return v2.ToDtype(torch.uint8, scale=True)(image)


# --- map files --------------------------------------------------------------------------------


def test_write_map_file_matches_imagefolder(tree, map_file):
    from torchvision.datasets import ImageFolder

    ref = ImageFolder(str(tree), allow_empty=False, is_valid_file=lambda p: p.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))
    ds = data.MapDataset(map_file)
    assert ds.classes == ref.classes == ["cat", "dog", "eel"]
    assert ds.num_classes == 3
    assert [(os.path.realpath(p), y) for p, y in ds.samples] == [(os.path.realpath(p), y) for p, y in ref.samples]
    # Paths are written relative to the map file's folder.
    first = map_file.read_text().splitlines()[0]
    assert not os.path.isabs(first.split("\t")[0])


def test_map_file_syntax_bom_crlf_comments_spaces(tree, tmp_path):
    img = tree / "cat" / "sub dir" / "c.jpg"
    text = "\ufeff# a comment\r\n\r\n" + f"{img}\t1\r\n" + "   \n" + f"{img}\t 2 \n# end"
    (tmp_path / "m.txt").write_bytes(text.encode("utf-8"))
    ds = data.MapDataset(tmp_path / "m.txt")
    assert [(p, y) for p, y in ds.samples] == [(str(img), 1), (str(img), 2)]
    assert ds[1][1] == 2 and ds[0][0].shape == (3, 64, 64)


def test_map_file_reports_every_bad_line(tree, tmp_path):
    good = tree / "cat" / "a.jpg"
    lines = [
        f"{good}\t0",
        f"{good}",  # 2: one field
        f"{good}\tcat",  # 3: not an integer
        f"{good}\t-1",  # 4: negative
        f"{good}\t7",  # 5: >= num_classes
        "missing.jpg\t0",  # 6: missing file
        f"{good}\t1\textra",  # 7: three fields
    ]
    (tmp_path / "bad.txt").write_text("\n".join(lines))
    with pytest.raises(ValueError) as err:
        data.MapDataset(tmp_path / "bad.txt", num_classes=3)
    msg = str(err.value)
    assert "bad.txt" in msg and "6 bad lines" in msg
    for n, why in [(2, "found 1"), (3, "'cat' is not an integer"), (4, "negative"), (5, "num_classes=3"),
                   (6, "missing.jpg' does not exist"), (7, "found 3")]:
        assert f"line {n}: " in msg and why in msg
    with pytest.warns(data.SkippedSamplesWarning, match="skipped 6 bad lines"):
        ds = data.MapDataset(tmp_path / "bad.txt", num_classes=3, on_error="skip")
    assert len(ds) == 1


def test_missing_files_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.MapDataset(tmp_path / "nope.txt")
    (tmp_path / "m.txt").write_text("x.jpg\t0\ny.jpg\t1\n")
    with pytest.raises(FileNotFoundError, match=r"(?s)line 1: image '.*x.jpg' does not exist.*line 2"):
        data.MapDataset(tmp_path / "m.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no samples"):
        data.MapDataset(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError):
        data.write_map_file(tmp_path / "no_tree", tmp_path / "out.txt")


# --- decoding -----------------------------------------------------------------------------------


def test_decode_matches_torchvision(tree):
    for path in sorted(tree.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        ours = data.read_image(path)
        assert ours.dtype == torch.uint8 and ours.shape[0] == 3
        torch.testing.assert_close(ours, _reference_decode(path), rtol=0, atol=0, msg=str(path))
    assert data.read_image(tree / "eel" / "i.jpg").shape == (3, 65, 51)  # EXIF orientation applied
    assert data.read_image(tree / "eel" / "f16.png").shape == (3, 33, 45)


def test_masks_are_class_indices(tree, tmp_path):
    mask = data.read_mask(tree / "eel" / "h.png")  # palette PNG
    assert torch.equal(mask, torch.from_numpy(np.array(Image.open(tree / "eel" / "h.png"))))
    gray = data.read_mask(tree / "eel" / "f.png")
    assert torch.equal(gray, torch.from_numpy(np.array(Image.open(tree / "eel" / "f.png"))))
    with pytest.raises(ValueError, match="one channel"):
        data.read_mask(tree / "cat" / "b.png")  # RGB: refused, never colour-converted


# --- transforms ---------------------------------------------------------------------------------


def test_eval_classification_transform_matches_torchvision(map_file):
    t = data.classification_transform(train=False, size=40, resize_size=46)
    ref = v2.Compose([v2.Resize(46), v2.CenterCrop(40), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    ds = data.MapDataset(map_file, transform=t)
    assert len(ds) == 10
    for i, (path, _) in enumerate(ds.samples):
        ours, _ = ds[i]
        assert ours.shape == (3, 40, 40) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref(_reference_decode(path)), rtol=0, atol=1e-6, msg=path)
    # Crop larger than the image pads with zeros, as v2.CenterCrop does.
    big = data.classification_transform(train=False, size=80, resize_size=64)
    img = _reference_decode(ds.samples[0][0])
    ref_big = v2.Compose([v2.Resize(64), v2.CenterCrop(80), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    torch.testing.assert_close(big(img), ref_big(img), rtol=0, atol=1e-6)


def test_train_classification_transform_reproduces_v2_draws(map_file):
    t = data.classification_transform(train=True, size=32)
    ref = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.RandomHorizontalFlip(0.5),
                      v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    img = _reference_decode(data.MapDataset(map_file).samples[3][0])
    for seed in range(25):
        torch.manual_seed(seed)
        torch.testing.assert_close(t(img, seed=seed), ref(img), rtol=0, atol=1e-6, msg=f"seed {seed}")
    narrow = data.classification_transform(train=True, size=24, scale=(0.9, 1.0), ratio=(3.0, 4.0), hflip_prob=0.2)
    ref_narrow = v2.Compose([v2.RandomResizedCrop(24, scale=(0.9, 1.0), ratio=(3.0, 4.0)), v2.RandomHorizontalFlip(0.2),
                             v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    for seed in range(10):  # mostly the central-crop fallback
        torch.manual_seed(seed)
        torch.testing.assert_close(narrow(img, seed=seed), ref_narrow(img), rtol=0, atol=1e-6)


def _crop_stats(outputs):
    # Channel 0 of _ramp is the x coordinate: its range gives the crop width, its slope the flip.
    width = np.array([o[0].max().item() - o[0].min().item() for o in outputs])
    flipped = np.array([(o[0, :, 0].mean() > o[0, :, -1].mean()).item() for o in outputs])
    return width.mean(), width.std(), flipped.mean()


def test_random_resized_crop_and_flip_statistics(tmp_path):
    x = torch.arange(80, dtype=torch.float32).view(1, 1, 80).expand(1, 60, 80) * 3
    img = torch.cat([x, x * 0, x * 0]).to(torch.uint8)
    write_png(img, str(tmp_path / "ramp.png"))
    (tmp_path / "m.txt").write_text("ramp.png\t0\n")
    ds = data.MapDataset(tmp_path / "m.txt", transform=data.classification_transform(True, 32, (0,) * 3, (1,) * 3), seed=7)
    ours = [ds.load(0, epoch)[0] for epoch in range(400)]  # per-sample seeds from (seed, epoch, index)
    ref_t = v2.Compose([v2.RandomResizedCrop(32), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])
    torch.manual_seed(1234)
    ref = [ref_t(img) for _ in range(400)]
    (mo, so, fo), (mr, sr, fr) = _crop_stats(ours), _crop_stats(ref)
    assert abs(mo - mr) < 0.06 and abs(so - sr) < 0.05 and abs(fo - fr) < 0.12
    assert 0.38 < fo < 0.62


def _seg_files(tmp_path, h=60, w=44, mask_hw=None):
    img = _rgb(h, w, 5)
    _write_jpeg(tmp_path / "img.jpg", img)
    mh, mw = mask_hw or (h, w)
    m = (np.arange(mh * mw).reshape(mh, mw) // 97 % 21).astype(np.uint8)
    m[:3] = 255
    pal = Image.fromarray(m, "P")
    pal.putpalette([(i * 29) % 256 for i in range(768)])
    pal.save(tmp_path / "mask.png")
    (tmp_path / "seg.txt").write_text("img.jpg\tmask.png\n")
    return tmp_path / "seg.txt"


def test_segmentation_eval_transform_matches_torchvision(tmp_path):
    seg = data.SegmentationMapDataset(_seg_files(tmp_path), transform=data.segmentation_transform(False, base_size=52))
    image, mask = seg[0]
    img = tv_tensors.Image(_reference_decode(tmp_path / "img.jpg"))
    ref_mask = tv_tensors.Mask(torch.from_numpy(np.array(Image.open(tmp_path / "mask.png")))[None])
    ri, rm = v2.Resize(52)(img, ref_mask)
    ri = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(ri))
    assert image.shape == (3, 70, 52) and mask.shape == (70, 52) and mask.dtype == torch.int64
    torch.testing.assert_close(image, ri.as_subclass(torch.Tensor), rtol=0, atol=1e-6)
    assert torch.equal(mask, rm[0].as_subclass(torch.Tensor).long())


def test_segmentation_train_transform_reproduces_v2_draws(tmp_path):
    _seg_files(tmp_path)
    base, crop = 40, 48
    t = data.segmentation_transform(True, base_size=base, crop_size=crop)
    img = _reference_decode(tmp_path / "img.jpg")
    mask = torch.from_numpy(np.array(Image.open(tmp_path / "mask.png")))
    for seed in range(20):
        torch.manual_seed(seed)
        ri, rm = v2.RandomResize(base // 2, base * 2)(tv_tensors.Image(img), tv_tensors.Mask(mask[None]))
        ri, rm = v2.RandomHorizontalFlip(0.5)(ri, rm)
        pad = [0, 0, max(crop - ri.shape[-1], 0), max(crop - ri.shape[-2], 0)]
        ri, rm = v2.functional.pad(ri, pad, fill=0), v2.functional.pad(rm, pad, fill=255)
        ri, rm = v2.RandomCrop(crop)(ri, rm)
        ri = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(ri))
        oi, om = t(img, mask, seed=seed)
        torch.testing.assert_close(oi, ri.as_subclass(torch.Tensor), rtol=0, atol=1e-6, msg=f"seed {seed}")
        assert torch.equal(om, rm[0].as_subclass(torch.Tensor).long()), seed
    sizes = {tuple(t(img, mask, seed=s)[1].shape) for s in range(30)}
    assert sizes == {(crop, crop)}
    assert any((t(img, mask, seed=s)[1] == 255).float().mean() > 0.2 for s in range(30))  # padding is ignore_index


def test_segmentation_mask_size_mismatch(tmp_path):
    seg = data.SegmentationMapDataset(_seg_files(tmp_path, mask_hw=(30, 44)))
    with pytest.raises(ValueError, match=r"seg.txt', line 1: mask '.*mask.png' is 30 x 44 but image '.*img.jpg' is 60 x 44"):
        seg[0]


def test_voc_map_file(tmp_path):
    voc = tmp_path / "VOC"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    for name in ("2007_0001", "2007_0002"):
        _write_jpeg(voc / "JPEGImages" / f"{name}.jpg", _rgb(30, 40, 1))
        Image.fromarray(np.zeros((30, 40), np.uint8), "P").save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_0001\n2007_0002\n")
    assert data.write_map_file(voc, tmp_path / "voc_train.txt") == 2
    seg = data.SegmentationMapDataset(tmp_path / "voc_train.txt", transform=data.segmentation_transform(True, 32, 24))
    batches = list(data.DataLoader(seg, batch_size=2, num_workers=2, seed=0))
    assert batches[0][0].shape == (2, 3, 24, 24) and batches[0][1].shape == (2, 24, 24)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_0003\n")
    with pytest.raises(FileNotFoundError, match="2007_0003.jpg"):
        data.write_map_file(voc, tmp_path / "voc_val.txt", split="val")


# --- loader -------------------------------------------------------------------------------------


def _threads():
    return len(os.listdir("/proc/self/task"))


def test_loader_batches_and_len(map_file):
    ds = data.MapDataset(map_file, transform=data.classification_transform(train=True, size=32))
    loader = data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, seed=0)
    assert len(loader) == 3
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    images, labels = batches[0]
    assert images.dtype == torch.float32 and images.shape == (4, 3, 32, 32) and images.is_contiguous()
    assert labels.dtype == torch.int64 and labels.shape == (4,)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(y for _, y in ds.samples)
    dropped = data.DataLoader(ds, batch_size=4, drop_last=True, seed=0)
    assert len(dropped) == 2 and len(list(dropped)) == 2
    eval_ds = data.MapDataset(map_file, transform=data.classification_transform(False, 32, resize_size=36))
    single = data.DataLoader(eval_ds, batch_size=3, num_workers=0)
    assert torch.equal(next(iter(single))[0][1], eval_ds[1][0])


def test_loader_is_reproducible(map_file):
    ds = data.MapDataset(map_file, transform=data.classification_transform(train=True, size=24), seed=3)

    def run(**kw):
        loader = data.DataLoader(ds, batch_size=2, shuffle=True, **kw)
        return [[torch.cat([x.flatten(), y.float()]) for x, y in loader] for _ in range(2)]

    a, b, c = run(seed=1, num_workers=2), run(seed=1, num_workers=1), run(seed=1, num_workers=0)
    for ea, eb, ec in zip(a, b, c):
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(ea, eb, ec))
    assert not all(torch.equal(x, y) for x, y in zip(a[0], a[1]))  # epochs differ
    d = run(seed=2, num_workers=2)
    assert not all(torch.equal(x, y) for x, y in zip(a[0], d[0]))


def test_loader_shutdown_on_break_exception_and_gc(map_file):
    ds = data.MapDataset(map_file, transform=data.classification_transform(train=True, size=24))
    base = _threads()
    for _ in data.DataLoader(ds, batch_size=1, num_workers=3, seed=0):
        assert _threads() == base + 3
        break
    gc.collect()
    assert _threads() == base
    with pytest.raises(KeyError):
        for _ in data.DataLoader(ds, batch_size=1, num_workers=3, seed=0):
            raise KeyError("user code failed")
    gc.collect()
    assert _threads() == base
    it = iter(data.DataLoader(ds, batch_size=1, num_workers=2, seed=0))
    next(it)
    del it
    assert _threads() == base
    it = iter(data.DataLoader(ds, batch_size=1, num_workers=2, seed=0))
    it.close()
    assert _threads() == base and list(it) == []


def _corrupt_map(tree, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"this is not a jpeg at all")
    good = [str(tree / "cat" / "a.jpg"), str(tree / "dog" / "e.png"), str(tree / "cat" / "b.png")]
    lines = [f"{good[0]}\t0", f"{good[1]}\t1", f"{good[2]}\t0", "bad.jpg\t1", f"{good[0]}\t0"]
    (tmp_path / "m.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.txt"


def test_loader_raises_on_the_batch_with_the_bad_sample(tree, tmp_path):
    ds = data.MapDataset(_corrupt_map(tree, tmp_path), transform=data.classification_transform(False, 24))
    base = _threads()
    it = iter(data.DataLoader(ds, batch_size=2, num_workers=2, seed=0))
    assert next(it)[0].shape == (2, 3, 24, 24)
    with pytest.raises(ValueError, match=r"m.txt', line 4, image '.*bad.jpg': unsupported image format"):
        next(it)
    assert next(it)[0].shape == (1, 3, 24, 24)  # the epoch goes on after the bad batch
    del it
    assert _threads() == base
    with pytest.raises(ValueError, match="line 4"):
        ds[3]
    os.remove(tmp_path / "bad.jpg")  # vanished after validation: FileNotFoundError, named
    with pytest.raises(FileNotFoundError, match=r"m.txt', line 4, image '.*bad.jpg'"):
        list(data.DataLoader(ds, batch_size=2, num_workers=2, seed=0))
    gc.collect()
    assert _threads() == base


def test_loader_skip_bad_samples_with_warning(tree, tmp_path):
    ds = data.MapDataset(_corrupt_map(tree, tmp_path), transform=data.classification_transform(False, 24))
    with pytest.warns(data.SkippedSamplesWarning, match="skipped 1 bad sample in epoch 0; first: .*line 4"):
        batches = list(data.DataLoader(ds, batch_size=2, num_workers=2, seed=0, on_error="skip"))
    assert [b[0].shape[0] for b in batches] == [2, 1, 1]
    single = data.DataLoader(ds, batch_size=1, num_workers=1, seed=0, on_error="skip")
    with pytest.warns(data.SkippedSamplesWarning, match="skipped 1 bad sample"):
        assert len(list(single)) == 4


def test_loader_collation_error_names_samples(map_file):
    ds = data.MapDataset(map_file)  # no transform: images keep their own sizes
    with pytest.raises(ValueError, match=r"cannot batch samples of different shapes: .*line 1 .* but .*line 2"):
        list(data.DataLoader(ds, batch_size=2, num_workers=1, seed=0))


def test_decode_device_cpu_gives_the_default_batches(map_file):
    """decode_device runs a batch at a time through MapDataset.load_on: on the CPU, the same batches."""
    ds = data.MapDataset(map_file, transform=data.classification_transform(train=True, size=24), seed=3)
    default = list(data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, seed=1))
    batched = list(data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, seed=1, decode_device="cpu"))
    assert len(batched) == len(default) == 3
    for (x, y), (bx, by) in zip(default, batched):
        assert torch.equal(x, bx) and torch.equal(y, by)


def test_decode_device_names_the_bad_sample_and_skips_only_it(tree, tmp_path):
    ds = data.MapDataset(_corrupt_map(tree, tmp_path), transform=data.classification_transform(False, 24))
    it = iter(data.DataLoader(ds, batch_size=2, num_workers=2, seed=0, decode_device="cpu"))
    assert next(it)[0].shape == (2, 3, 24, 24)
    with pytest.raises(ValueError, match=r"m.txt', line 4, image '.*bad.jpg': unsupported image format"):
        next(it)
    assert next(it)[0].shape == (1, 3, 24, 24)
    with pytest.warns(data.SkippedSamplesWarning, match="skipped 1 bad sample in epoch 0; first: .*line 4"):
        batches = list(data.DataLoader(ds, batch_size=2, num_workers=2, seed=0, on_error="skip", decode_device="cpu"))
    assert [b[0].shape[0] for b in batches] == [2, 1, 1]


def test_decode_device_refusals(map_file, tmp_path):
    seg = data.SegmentationMapDataset(_seg_files(tmp_path), transform=data.segmentation_transform(False, base_size=52))
    with pytest.raises(ValueError, match="SegmentationMapDataset decodes on the CPU only"):
        data.DataLoader(seg, decode_device="cpu")
    ds = data.MapDataset(map_file, transform=data.classification_transform(False, 24))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="decode_device='cuda' but no CUDA device is available"):
            data.DataLoader(ds, decode_device="cuda")


@pytest.mark.cuda
def test_decode_device_cuda_decodes_each_batch_on_the_gpu(map_file):
    ds = data.MapDataset(map_file, transform=data.classification_transform(train=True, size=32), seed=3)
    cpu = list(data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, seed=1))
    gpu = list(data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, seed=1, decode_device="cuda"))
    assert len(gpu) == len(cpu)
    for (x, y), (gx, gy) in zip(cpu, gpu):
        assert gx.device.type == "cuda" and gy.device.type == "cuda" and gx.shape == x.shape
        assert torch.equal(gy.cpu(), y)
        # The same crops and flips; nvJPEG's IDCT and the float resize on CUDA move pixels by a few
        # levels (one level is 1 / 255 / std, about 0.017 after normalisation).
        difference = (gx.cpu() - x).abs()
        assert difference.mean() < 0.02 and difference.max() < 0.25
    with pytest.raises(ValueError, match="pin_memory pins CPU batches"):
        data.DataLoader(ds, batch_size=4, pin_memory=True, decode_device="cuda")


def test_bad_arguments(map_file):
    ds = data.MapDataset(map_file)
    with pytest.raises(ValueError, match="batch_size"):
        data.DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="on_error"):
        data.DataLoader(ds, on_error="ignore")
    with pytest.raises(TypeError):
        data.DataLoader([1, 2, 3])
    with pytest.raises(TypeError):
        data.MapDataset(map_file, transform=v2.Resize(3))
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(ValueError, match="hflip_prob"):
        data.classification_transform(train=True, hflip_prob=2.0)
    with pytest.warns(UserWarning, match="pin_memory"):
        if not torch.cuda.is_available():
            data.DataLoader(ds, pin_memory=True)
        else:
            warnings.warn("pin_memory skipped: CUDA present")


def test_exported_from_package():
    assert torchtl.data is data
