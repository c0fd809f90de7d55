"""torchtl.Predictor (the C++ Predictor) against plain Python on the same files: torchvision's model with
load_state_dict, torchvision.transforms.v2's evaluation transform, softmax; and its errors on bad input."""
import io
import os

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.io import encode_jpeg, write_jpeg, write_png

import torchtl
from torchtl.tools import cli
from predict_reference import python_classify, python_segment, read_rgb
from test_engine import loader, seg_loader, write_classification_set, write_segmentation_set


def write_images(root):
    """JPEG and PNG files of several sizes (none square), and a gray one."""
    g = torch.Generator().manual_seed(5)
    paths = []
    for i, (h, w) in enumerate([(40, 52), (61, 37), (48, 48), (35, 70)]):
        img = (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)
        img[i % 3] = img[i % 3] // 2 + 128
        path = root / (f"img{i}.jpg" if i % 2 == 0 else f"img{i}.png")
        (write_jpeg if i % 2 == 0 else write_png)(img, str(path))
        paths.append(str(path))
    gray = root / "gray.png"
    write_png((torch.rand(1, 30, 44, generator=g) * 255).to(torch.uint8), str(gray))
    paths.append(str(gray))
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    return root, write_images(root)


@pytest.fixture(scope="module")
def fit_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_cls")
    cls_map = write_classification_set(root, n_per_class=4)
    (root / "train_classes.txt").write_text("red\ngreen\n")
    torch.manual_seed(0)
    model = torchtl.models.resnet18(num_classes=2)
    torchtl.engine.fit(model, loader(cls_map), loader(cls_map), lr=0.05, epochs=1, device="cpu", progress=False,
                       checkpoint_dir=root / "run")
    return str(root / "run" / "best.pt")


@pytest.fixture(scope="module")
def fit_segmenter(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_seg")
    seg_map = write_segmentation_set(root)
    torch.manual_seed(0)
    model = torchtl.segmentation.fcn_resnet50(num_classes=3)
    torchtl.engine.fit(model, seg_loader(seg_map), seg_loader(seg_map), task="segmentation", lr=0.05, epochs=1,
                       device="cpu", progress=False, checkpoint_dir=root / "run")
    return str(root / "run" / "best.pt")


@pytest.fixture(scope="module")
def cli_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_cls")
    cls_map = write_classification_set(root, n_per_class=4)
    (root / "train_classes.txt").write_text("red\ngreen\n")
    assert cli.main(["train", "classification", "--train", str(cls_map), "--val", str(cls_map), "--model", "resnet18",
                     "--epochs", "1", "-b", "4", "--size", "32", "--device", "cpu", "--quiet",
                     "--output-dir", str(root / "run")]) == 0
    return str(root / "run" / "best.pt")


def check_classification(path, images, exact):
    predictor = torchtl.Predictor(path, device="cpu")
    assert predictor.device == "cpu" and predictor.task == "classification"
    if exact:
        with torchtl.exact_mode():
            got = predictor.classify(images, topk=2)
    else:
        got = predictor.classify(images, topk=2)
    values, indices = python_classify(path, images, topk=2)
    classes = torchtl.read_model_metadata(path)["classes"]
    for row, predictions in enumerate(got):
        assert [p.index for p in predictions] == indices[row].tolist()
        assert [p.label for p in predictions] == [classes[i] if classes else str(i) for i in indices[row].tolist()]
        probs = torch.tensor([p.probability for p in predictions], dtype=torch.float32)
        if exact:
            assert torch.equal(probs, values[row]), (probs, values[row])
        else:
            # The fast path (channels_last, folded batch norm) differs from torchvision's default
            # by rounding: tests/test_fast_path.py's tolerance on logits, here on probabilities.
            torch.testing.assert_close(probs, values[row], rtol=1e-3, atol=1e-4)


def test_classify_equals_plain_python_for_a_model_from_fit(fit_classifier, files):
    _, images = files
    check_classification(fit_classifier, images, exact=True)
    check_classification(fit_classifier, images, exact=False)
    assert torchtl.read_model_metadata(fit_classifier)["classes"] == ["red", "green"]


def test_classify_equals_plain_python_for_a_model_from_torchtl_train(cli_classifier, files):
    _, images = files
    check_classification(cli_classifier, images, exact=True)
    check_classification(cli_classifier, images, exact=False)


def test_segment_equals_plain_python_for_a_model_from_fit(fit_segmenter, files):
    _, images = files
    predictor = torchtl.Predictor(fit_segmenter, device="cpu")
    expected = python_segment(fit_segmenter, images)
    with torchtl.exact_mode():
        exact = predictor.segment(images)
    fast = predictor.segment(images)
    for path, want, got_exact, got_fast in zip(images, expected, exact, fast):
        assert got_exact.dtype == torch.int64 and got_exact.shape == read_rgb(path).shape[-2:]
        assert torch.equal(got_exact, want), path
        # Rounding may flip a pixel whose two best classes tie to the last bits; none did here.
        assert (got_fast != want).float().mean().item() <= 1e-3, path


def test_encoded_bytes_and_tensors_predict_as_their_files(fit_classifier, files):
    _, images = files
    predictor = torchtl.Predictor(fit_classifier, device="cpu")
    from_paths = predictor.classify(images, topk=1)
    raw = [open(p, "rb").read() for p in images]
    from_bytes = predictor.classify(raw, topk=1)
    from_tensors = predictor.classify([torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in raw], topk=1)
    for a, b, c in zip(from_paths, from_bytes, from_tensors):
        assert (a[0].index, a[0].probability) == (b[0].index, b[0].probability) == (c[0].index, c[0].probability)


def test_a_bare_state_dict_has_no_metadata_to_predict_with(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"bare\.pt' has no torchtl metadata"):
        torchtl.Predictor(tmp_path / "bare.pt", device="cpu")


# ------------------------------------------------------------------------------ hostile input

def test_wrong_task_and_metadata_that_contradicts_the_weights(tmp_path, fit_classifier, fit_segmenter, files):
    _, images = files
    with pytest.raises(ValueError, match=r"Predictor.segment: model file '.*best.pt' holds a classification model "
                                         r"\(field 'task'\); use classify"):
        torchtl.Predictor(fit_classifier, device="cpu").segment(images[:1])
    with pytest.raises(ValueError, match=r"holds a segmentation model \(field 'task'\); use segment"):
        torchtl.Predictor(fit_segmenter, device="cpu").classify(images[:1])
    model = torchtl.models.resnet18(num_classes=3)
    torchtl.save_model(model, tmp_path / "m.pt")
    # The weights of another model under the same metadata: a resnet34's state dict.
    import zipfile
    state = torchvision.models.resnet34(num_classes=3).state_dict()
    torch.save(state, tmp_path / "other.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        record = next(z.read(n) for n in z.namelist() if n.endswith("extra/torchtl_model.json"))
    with zipfile.ZipFile(tmp_path / "other.pt") as z:
        top = z.namelist()[0].split("/")[0]
    with zipfile.ZipFile(tmp_path / "other.pt", "a") as z:
        z.writestr(f"{top}/extra/torchtl_model.json", record)
    with pytest.raises(ValueError, match=r"(?s)other.pt': the weights do not fit field 'builder' 'resnet18'.*unexpected"):
        torchtl.Predictor(tmp_path / "other.pt", device="cpu")


def pil_bytes(image, fmt, **kwargs):
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def test_unusual_images_give_a_correct_result_or_a_clear_error(tmp_path, fit_classifier):
    predictor = torchtl.Predictor(fit_classifier, device="cpu")
    rng = torch.Generator().manual_seed(0)
    rgb = (torch.rand(3, 40, 50, generator=rng) * 255).to(torch.uint8)
    pil_rgb = Image.fromarray(rgb.permute(1, 2, 0).numpy())
    # Each decodes to the same RGB image as torchvision's decoder gives, and predicts as it does.
    cases = {
        "one_pixel.png": pil_bytes(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "palette.png": pil_bytes(pil_rgb.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG"),
        "cmyk.jpg": pil_bytes(pil_rgb.convert("CMYK"), "JPEG", quality=95),
        "gray_alpha.png": pil_bytes(pil_rgb.convert("LA"), "PNG"),
    }
    sixteen = (torch.rand(3, 20, 30, generator=rng) * 65535).to(torch.int32)
    import numpy as np
    Image.fromarray(sixteen[0].numpy().astype(np.uint16)).save(tmp_path / "gray16.png")
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
    paths = [str(tmp_path / n) for n in [*cases, "gray16.png"]]
    with torchtl.exact_mode():
        got = predictor.classify(paths, topk=2)
    values, indices = python_classify(fit_classifier, paths, topk=2)
    for row, predictions in enumerate(got):
        assert [p.index for p in predictions] == indices[row].tolist(), paths[row]
        assert torch.equal(torch.tensor([p.probability for p in predictions], dtype=torch.float32), values[row]), paths[row]


BAD_IMAGES = {
    "empty.jpg": (b"", r"empty|0 bytes|no bytes"),
    "random.png": (os.urandom(2000), r"random.png"),
    "text.jpg": (b"just some text, not an image", r"text.jpg"),
    "truncated.jpg": (None, r"truncated.jpg"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_are_named(tmp_path, fit_classifier, name):
    raw, message = BAD_IMAGES[name]
    if raw is None:
        raw = bytes(encode_jpeg((torch.rand(3, 64, 64) * 255).to(torch.uint8)))[:300]
    (tmp_path / name).write_bytes(raw)
    predictor = torchtl.Predictor(fit_classifier, device="cpu")
    good = str(tmp_path / "good.png")
    write_png((torch.rand(3, 20, 20) * 255).to(torch.uint8), good)
    with pytest.raises(ValueError, match=message) as e:
        predictor.classify([good, str(tmp_path / name)])
    assert str(tmp_path / name) in str(e.value)
    if raw:
        with pytest.raises(ValueError, match=r"image 0 \(\d+ encoded bytes\)"):
            predictor.classify([raw])
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        predictor.classify([str(tmp_path / "nothing.jpg")])
    with pytest.raises(TypeError, match="a list of images"):
        predictor.classify(good)


def test_a_very_large_image(tmp_path, fit_classifier):
    # 10000 x 10000: 300 MB decoded. It predicts (the resize antialiases down to 32 px), as torchvision does.
    big = torch.zeros(3, 10000, 10000, dtype=torch.uint8)
    big[0, :5000] = 200
    write_jpeg(big, str(tmp_path / "big.jpg"), quality=50)
    del big
    predictor = torchtl.Predictor(fit_classifier, device="cpu")
    with torchtl.exact_mode():
        got = predictor.classify([str(tmp_path / "big.jpg")], topk=1)[0][0]
    values, indices = python_classify(fit_classifier, [str(tmp_path / "big.jpg")], topk=1)
    assert got.index == indices[0, 0].item() and got.probability == values[0, 0].item()
