"""Decoding through TorchCodec: every format torchtl reads gives torchvision's pixels (PIL's for
BMP, which only PIL decodes), masks keep their stored indices, other formats are named errors,
and torchvision's ops take over, with one warning, where TorchCodec cannot be loaded."""
import io
import os
import re
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image

from torchtl import _C, data

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _array(h=37, w=53, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def _pil(image, fmt, **kw):
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def _animated_gif():
    frames = [Image.fromarray(np.roll(_array(), 7 * i, 0)).convert("P") for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


def _bmp16(rgb565: bool, h=5, w=7):
    """A top-down 16-bit BMP (BITMAPINFOHEADER + BI_BITFIELDS masks, or BI_RGB 5-5-5)."""
    pixels = np.random.RandomState(1).randint(0, 65536, (h, w)).astype("<u2")
    stride = (w * 2 + 3) // 4 * 4
    rows = b"".join(p.tobytes().ljust(stride, b"\0") for p in pixels)
    masks = struct.pack("<3I", 0xF800, 0x7E0, 0x1F) if rgb565 else b""
    offset = 14 + 40 + len(masks)
    info = struct.pack("<IiiHHIIiiII", 40, w, -h, 1, 16, 3 if rgb565 else 0, len(rows), 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + masks + rows


ARR = _array()
RGBA = np.dstack([ARR, ARR[..., :1]])
# name -> encoded bytes. torchvision decodes all but BMP: its pixels are torchtl's before TorchCodec.
IMAGES = {
    "rgb.jpg": _pil(Image.fromarray(ARR), "JPEG"),
    "gray.jpg": _pil(Image.fromarray(ARR[..., 0]), "JPEG"),
    "cmyk.jpg": _pil(Image.fromarray(ARR).convert("CMYK"), "JPEG"),
    "rgb.png": _pil(Image.fromarray(ARR), "PNG"),
    "gray.png": _pil(Image.fromarray(ARR[..., 0]), "PNG"),
    "rgba.png": _pil(Image.fromarray(RGBA, "RGBA"), "PNG"),
    "gray_alpha.png": _pil(Image.fromarray(RGBA[..., 2:], "LA"), "PNG"),
    "palette.png": _pil(Image.fromarray(ARR).convert("P"), "PNG"),
    "palette_alpha.png": _pil(Image.fromarray(ARR).convert("P"), "PNG", transparency=3),
    "rgb16.png": cv2.imencode(".png", (np.random.RandomState(2).rand(33, 45, 3) * 65535).astype(np.uint16))[1].tobytes(),
    "gray16.png": cv2.imencode(".png", (np.random.RandomState(3).rand(33, 45) * 65535).astype(np.uint16))[1].tobytes(),
    "lossless.webp": _pil(Image.fromarray(ARR), "WEBP", lossless=True),
    "lossy.webp": _pil(Image.fromarray(ARR), "WEBP", quality=80),
    "alpha.webp": _pil(Image.fromarray(RGBA, "RGBA"), "WEBP", quality=80),
    "still.gif": _pil(Image.fromarray(ARR).convert("P"), "GIF"),
    "animated.gif": _animated_gif(),
}
# PIL's own BMP layouts (1-bit, 8-bit gray and palette, 24-bit, 32-bit with alpha), OpenCV's, and 16-bit.
BMPS = {
    "bilevel.bmp": _pil(Image.fromarray(ARR[..., 0] > 128), "BMP"),
    "gray.bmp": _pil(Image.fromarray(ARR[..., 0]), "BMP"),
    "palette.bmp": _pil(Image.fromarray(ARR).convert("P"), "BMP"),
    "rgb.bmp": _pil(Image.fromarray(ARR[:, :51]), "BMP"),  # 51 * 3 bytes: padded rows
    "rgba.bmp": _pil(Image.fromarray(RGBA, "RGBA"), "BMP"),
    "opencv.bmp": cv2.imencode(".bmp", ARR[:, :50])[1].tobytes(),
    "rgb565.bmp": _bmp16(True),
    "rgb555.bmp": _bmp16(False),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    for name, encoded in {**IMAGES, **BMPS}.items():
        (root / name).write_bytes(encoded)
    return root


def test_torchcodec_decodes():
    assert _C.data.load_image_ops("") == "", "TorchCodec is installed here, so it must be the decoder"
    assert torch.ops.torchcodec_ns.decode_jpeg is not None


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_formats_give_torchvisions_pixels(files, name):
    ours = data.read_image(files / name)
    ref = decode_image(str(files / name), ImageReadMode.RGB, apply_exif_orientation=True)
    if ref.dim() == 4:
        ref = ref[0]  # the first frame of an animation
    if ref.dtype == torch.uint16:
        ref = (ref.to(torch.int32) >> 8).to(torch.uint8)  # v2.ToDtype(uint8, scale=True)
    assert ours.dtype == torch.uint8 and ours.shape == (3,) + ref.shape[1:]
    assert torch.equal(ours, ref)
    if not name.endswith("16.png"):  # PIL rounds 16 to 8 bits; torchvision (and torchtl) truncate
        pil = torch.from_numpy(np.array(Image.open(files / name).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(ours, pil)


@pytest.mark.parametrize("name", sorted(BMPS))
def test_bmp_gives_pils_pixels(files, name):
    # What ImageFolder's loader returns: PIL's image converted to RGB.
    ref = torch.from_numpy(np.array(Image.open(files / name).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(data.read_image(files / name), ref)


def test_masks_keep_stored_values(tmp_path):
    indices = np.random.RandomState(4).randint(0, 12, (21, 30)).astype(np.uint8)
    cases = {}
    # Repeated colours: only the stored index tells entries 0 and 5 apart.
    repeated = Image.fromarray(indices, "P")
    repeated.putpalette([0, 0, 0] * 6 + [(i * 37) % 256 for i in range(18, 768)])
    cases["repeated.png"] = repeated
    four_bit = Image.fromarray(indices, "P")
    four_bit.putpalette([(i * 53) % 256 for i in range(48)])
    cases["four_bit.png"] = four_bit
    cases["gray.png"] = Image.fromarray(indices * 20, "L")
    for name, image in cases.items():
        kwargs = {"bits": 4} if name == "four_bit.png" else {}
        image.save(tmp_path / name, **kwargs)
        mask = data.read_mask(tmp_path / name)
        assert mask.dtype == torch.uint8
        assert torch.equal(mask, torch.from_numpy(np.array(Image.open(tmp_path / name)))), name
    # A palette PNG with transparency: indices, as before.
    repeated.save(tmp_path / "alpha.png", transparency=2)
    assert torch.equal(data.read_mask(tmp_path / "alpha.png"), torch.from_numpy(indices))
    wide = (np.random.RandomState(5).rand(9, 11) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "gray16.png"), wide)
    mask = data.read_mask(tmp_path / "gray16.png")
    assert mask.dtype == torch.int32 and torch.equal(mask, torch.from_numpy(wide.astype(np.int32)))
    with pytest.raises(ValueError, match="3 channels; colour masks are not converted"):
        data.read_mask(_write(tmp_path / "rgb.png", IMAGES["rgb.png"]))


def _write(path, encoded):
    path.write_bytes(encoded)
    return path


def test_other_formats_are_named_errors(tmp_path):
    Image.fromarray(ARR).save(tmp_path / "photo.tif")
    _write(tmp_path / "rle.bmp", BMPS["palette.bmp"][:30] + struct.pack("<I", 1) + BMPS["palette.bmp"][34:])
    _write(tmp_path / "empty.jpg", b"")
    _write(tmp_path / "ok.png", IMAGES["rgb.png"])
    (tmp_path / "m.txt").write_text("ok.png\t0\nphoto.tif\t0\nrle.bmp\t1\nempty.jpg\t1\n")
    ds = data.MapDataset(tmp_path / "m.txt")
    assert ds[0][0].shape == (3, 37, 53)
    where = re.escape(str(tmp_path / "m.txt"))
    with pytest.raises(ValueError, match=rf"map file '{where}', line 2, image '.*photo.tif': unsupported image format "
                                         r"\(not JPEG, PNG, WebP, GIF or BMP"):
        ds[1]
    with pytest.raises(ValueError, match=r"line 3, image '.*rle.bmp': RLE-compressed BMP files are not supported"):
        ds[2]
    with pytest.raises(ValueError, match=r"line 4, image '.*empty.jpg': the file is empty"):
        ds[3]


def test_map_files_list_bmp_as_image_folder(tmp_path):
    for cls, names in {"a": ["x.bmp", "y.png"], "b": ["z.jpg", "w.bmp"]}.items():
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(ARR).save(tmp_path / "tree" / cls / name)
    data.write_map_file(tmp_path / "tree", tmp_path / "m.txt")
    ours = data.MapDataset(tmp_path / "m.txt")
    ref = ImageFolder(str(tmp_path / "tree"))
    assert [(os.path.realpath(p), c) for p, c in ours.samples] == [(os.path.realpath(p), c) for p, c in ref.samples]
    for (image, label), (pil, ref_label) in zip((ours[i] for i in range(len(ours))), ref):
        assert label == ref_label and torch.equal(image, torch.from_numpy(np.array(pil)).permute(2, 0, 1))


def _run(code, **env):
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT, **env}, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("env, reason", [
    ({"TORCHTL_IMAGE_BACKEND": "torchvision"}, "TORCHTL_IMAGE_BACKEND=torchvision"),
    ({"TORCHTL_TORCHCODEC_LIBRARY": "/nonexistent/libtorchcodec_image.so"},
     "'/nonexistent/libtorchcodec_image.so' (from $TORCHTL_TORCHCODEC_LIBRARY) does not exist"),
])
def test_fallback_to_torchvision_warns_once_and_decodes_the_same(files, env, reason):
    names = sorted(IMAGES) + ["palette.bmp"]
    code = (
        "import torch, torchtl\n"
        f"images = [torchtl.data.read_image(p) for p in {[str(files / n) for n in names]!r}]\n"
        f"masks = [torchtl.data.read_mask(p) for p in {[str(files / n) for n in ('palette.png', 'gray16.png')]!r}]\n"
        f"torch.save((images, masks), {str(files / 'fallback.pt')!r})\n"
    )
    out = _run(code, **env)
    assert out.stderr.count("torchtl decodes images with torchvision's deprecated image ops") == 1, out.stderr
    assert reason in out.stderr
    images, masks = torch.load(files / "fallback.pt")
    for name, image in zip(names, images):
        assert torch.equal(image, data.read_image(files / name)), name
    for name, mask in zip(("palette.png", "gray16.png"), masks):
        assert torch.equal(mask, data.read_mask(files / name)), name
    assert "torchtl decodes images with torchvision" not in _run("import torchtl", TORCHTL_IMAGE_BACKEND="torchcodec").stderr


def test_a_forced_backend_that_cannot_load_is_an_error():
    out = subprocess.run([sys.executable, "-c", "import torchtl.data"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT, "TORCHTL_IMAGE_BACKEND": "torchcodec",
                              "TORCHTL_TORCHCODEC_LIBRARY": "/nonexistent/lib.so"})
    assert out.returncode != 0
    assert "'/nonexistent/lib.so' (from $TORCHTL_TORCHCODEC_LIBRARY) does not exist" in out.stderr
    assert "(TORCHTL_IMAGE_BACKEND=torchcodec)" in out.stderr


def test_read_jpegs_refuses_the_cpu(files):
    with pytest.raises(ValueError, match="read_jpegs decodes on a CUDA device, got cpu; use read_image"):
        data.read_jpegs([files / "rgb.jpg"], device="cpu")


@pytest.mark.cuda
def test_read_jpegs_decodes_a_batch_on_the_gpu(files):
    names = ["rgb.jpg", "gray.jpg"]
    images = data.read_jpegs([files / n for n in names], device="cuda")
    for name, image in zip(names, images):
        ref = data.read_image(files / name)
        assert image.device.type == "cuda" and image.dtype == torch.uint8 and image.shape == ref.shape
        # nvJPEG's IDCT may differ from libjpeg-turbo's by a level or two.
        assert (image.cpu().int() - ref.int()).abs().max() <= 2, name
    with pytest.raises(ValueError, match=r"rgb.png' is not a JPEG file"):
        data.read_jpegs([files / "rgb.jpg", files / "rgb.png"])
