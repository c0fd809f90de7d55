"""The C++ augmentation policies, RandomErasing and the classification preset held bit-exact to
torchvision.transforms.v2 on the same draws (torch.manual_seed(s) against a generator seeded s)."""
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from torchtl import _C, augment, data

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODES = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
         "bicubic": InterpolationMode.BICUBIC}


def _image(c, h, w, seed):
    # Smooth ramps plus noise: a spread histogram (equalize, autocontrast) and edges (sharpness).
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h).view(1, h, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w)
    base = torch.cat([y * x, (1 - y) * x, y * (1 - x)])[:c] * 180 + 30
    return (base + torch.randint(-25, 26, (c, h, w), generator=g)).clamp(0, 255).to(torch.uint8)


IMAGES = [_image(3, 24, 31, 0), _image(3, 20, 20, 1), _image(1, 17, 22, 2)]

MAGNITUDES = {
    "Identity": [0.0],
    "ShearX": [0.3, -0.3, 0.99, -0.75],
    "ShearY": [0.3, -0.99, 0.5],
    "TranslateX": [5.7, -5.7, 32.0, -14.2],
    "TranslateY": [4.3, -32.0, 11.0],
    "Rotate": [0.0, 30.0, -27.0, 90.0, -90.0, 180.0, 270.0, -135.0, 360.0, 400.5],
    "Brightness": [0.5, -0.5, 0.99, -0.99],
    "Color": [0.5, -0.5, 0.99, -0.9],
    "Contrast": [0.5, -0.5, 0.99, -0.9],
    "Sharpness": [0.5, -0.5, 0.99, -0.99],
    "Posterize": [float(b) for b in range(9)],
    "Solarize": [0.0, 0.3, 0.5, 1.0],
    "AutoContrast": [0.0],
    "Equalize": [0.0],
    "Invert": [0.0],
}


def _v2_op(image, op, magnitude, interpolation):
    t = v2.AutoAugment()
    return t._apply_image_or_video_transform(image, op, magnitude, interpolation=MODES[interpolation], fill=t._fill)


@pytest.mark.parametrize("op", list(MAGNITUDES))
def test_each_op_matches_v2(op):
    for image in IMAGES:
        for magnitude in MAGNITUDES[op]:
            for mode in ("nearest", "bilinear"):
                ours = _C.data.augment_op(image, op, magnitude, mode)
                ref = _v2_op(image, op, magnitude, mode)
                assert ours.dtype == ref.dtype and torch.equal(ours, ref), (op, magnitude, mode, tuple(image.shape))
    # The batched shape AugMix feeds its ops, and float images (RandomErasing's side of the preset).
    batch = IMAGES[0][None]
    magnitude = MAGNITUDES[op][-1]
    assert torch.equal(_C.data.augment_op(batch, op, magnitude, "bilinear"), _v2_op(batch, op, magnitude, "bilinear"))
    if op != "Equalize":
        f = IMAGES[0].float() / 255
        torch.testing.assert_close(_C.data.augment_op(f, op, magnitude, "bilinear"), _v2_op(f, op, magnitude, "bilinear"),
                                   rtol=0, atol=0)


def test_degenerate_images_match_v2():
    flat = torch.full((3, 9, 11), 77, dtype=torch.uint8)  # autocontrast's max == min, equalize's step == 0
    two = torch.zeros(3, 9, 11, dtype=torch.uint8)
    two[:, :, 5:] = 200
    tiny = IMAGES[0][:, :2, :5]  # sharpness leaves images of 2 rows alone
    for image in (flat, two, tiny):
        for op in ("AutoContrast", "Equalize", "Sharpness", "Contrast"):
            assert torch.equal(_C.data.augment_op(image, op, 0.4, "nearest"), _v2_op(image, op, 0.4, "nearest")), op


def _policy_pairs():
    return [
        ("ta_wide", augment.trivial_augment_wide(), v2.TrivialAugmentWide(), 60),
        ("ta_wide bilinear 11 bins", augment.trivial_augment_wide(11, "bilinear"),
         v2.TrivialAugmentWide(11, interpolation=InterpolationMode.BILINEAR), 25),
        ("ra", augment.rand_augment(), v2.RandAugment(), 40),
        ("ra 3 ops m=5 bilinear", augment.rand_augment(3, 5, 10, "bilinear"),
         v2.RandAugment(3, 5, 10, interpolation=InterpolationMode.BILINEAR), 20),
        ("imagenet", augment.auto_augment(), v2.AutoAugment(), 60),
        ("augmix", augment.aug_mix(), v2.AugMix(), 20),
        ("augmix partial depth 2 nearest", augment.aug_mix(5, 2, 2, 0.5, False, "nearest"),
         v2.AugMix(5, 2, 2, 0.5, False, interpolation=InterpolationMode.NEAREST), 10),
    ]


@pytest.mark.parametrize("name,ours,ref,seeds", _policy_pairs(), ids=[p[0] for p in _policy_pairs()])
def test_policies_reproduce_v2_draws(name, ours, ref, seeds):
    for image, count in ((IMAGES[0], seeds), (IMAGES[1], 8)):
        for seed in range(count):
            torch.manual_seed(seed)
            expected = ref(image)
            got = ours(image, seed=seed)
            assert got.dtype == torch.uint8 and torch.equal(got, expected), (name, seed, tuple(image.shape))


def test_policies_report_and_refuse():
    assert "RandAugment(num_ops=2, magnitude=9" in repr(augment.rand_augment())
    assert "AugMix(severity=3" in repr(augment.aug_mix())
    with pytest.raises(ValueError, match="policy 'cifar10'"):
        augment.auto_augment("cifar10")
    with pytest.raises(ValueError, match="severity"):
        augment.aug_mix(severity=11)
    with pytest.raises(ValueError, match="magnitude"):
        augment.rand_augment(magnitude=31)
    with pytest.raises(ValueError, match="nearest' or 'bilinear"):
        augment.trivial_augment_wide(interpolation="bicubic")
    with pytest.raises(ValueError, match="uint8"):
        augment.trivial_augment_wide()(IMAGES[0].float())
    with pytest.raises(ValueError, match="unknown augmentation op 'Blur'"):
        _C.data.augment_op(IMAGES[0], "Blur", 0.0)


def test_random_erasing_reproduces_v2_draws():
    normalized = v2.Normalize(MEAN, STD)(IMAGES[0].float() / 255)
    cases = [
        (augment.random_erasing(), v2.RandomErasing(), normalized),
        (augment.random_erasing(1.0, (0.1, 0.5), (0.5, 2.0), (1.0, -1.0, 0.5)),
         v2.RandomErasing(1.0, (0.1, 0.5), (0.5, 2.0), (1.0, -1.0, 0.5)), normalized),
        (augment.random_erasing(0.8, (0.6, 0.99)), v2.RandomErasing(0.8, (0.6, 0.99)), IMAGES[1]),  # fallbacks too
    ]
    for ours, ref, image in cases:
        for seed in range(30):
            torch.manual_seed(seed)
            expected = ref(image)
            assert torch.equal(ours(image, seed=seed), expected), (repr(ours), seed)
    with pytest.raises(ValueError, match="single value or 3"):
        augment.random_erasing(1.0, value=(1.0, 2.0))(normalized)


def _reference_train_preset(crop_size, interpolation, auto_augment_policy, ra_magnitude, augmix_severity,
                            random_erase_prob, hflip_prob=0.5):
    # references/classification/presets.py ClassificationPresetTrain(use_v2=True, backend="tensor")
    # on a uint8 tensor (its PILToTensor is then a no-op).
    T = v2
    trans = [T.RandomResizedCrop(crop_size, interpolation=interpolation, antialias=True)]
    if hflip_prob > 0:
        trans.append(T.RandomHorizontalFlip(hflip_prob))
    if auto_augment_policy is not None:
        if auto_augment_policy == "ra":
            trans.append(T.RandAugment(interpolation=interpolation, magnitude=ra_magnitude))
        elif auto_augment_policy == "ta_wide":
            trans.append(T.TrivialAugmentWide(interpolation=interpolation))
        elif auto_augment_policy == "augmix":
            trans.append(T.AugMix(interpolation=interpolation, severity=augmix_severity))
        else:
            trans.append(T.AutoAugment(policy=T.AutoAugmentPolicy(auto_augment_policy), interpolation=interpolation))
    trans += [T.ToDtype(torch.float, scale=True), T.Normalize(mean=MEAN, std=STD)]
    if random_erase_prob > 0:
        trans.append(T.RandomErasing(p=random_erase_prob))
    trans.append(T.ToPureTensor())
    return T.Compose(trans)


@pytest.mark.parametrize("policy,interpolation,random_erase", [
    (None, "bicubic", 0.0),
    ("ta_wide", "bilinear", 0.3),
    ("ra", "nearest", 0.0),
    ("augmix", "bilinear", 0.0),
    ("imagenet", "bilinear", 0.5),
])
def test_classification_preset_matches_references(policy, interpolation, random_erase):
    image = _image(3, 45, 60, 7)
    train, val = data.classification_presets(train_crop_size=24, val_resize_size=30, val_crop_size=26,
                                             interpolation=interpolation, auto_augment=policy, ra_magnitude=7,
                                             augmix_severity=4, random_erase=random_erase)
    ref = _reference_train_preset(24, MODES[interpolation], policy, 7, 4, random_erase)
    for seed in range(12):
        torch.manual_seed(seed)
        expected = ref(image)
        torch.testing.assert_close(train(image, seed=seed), expected, rtol=0, atol=0, msg=f"seed {seed}")
    ref_val = v2.Compose([v2.Resize(30, interpolation=MODES[interpolation], antialias=True), v2.CenterCrop(26),
                          v2.ToDtype(torch.float, scale=True), v2.Normalize(MEAN, STD)])
    torch.testing.assert_close(val(image), ref_val(image), rtol=0, atol=0)


def test_classification_preset_options():
    t = data.classification_transform(True, 24, auto_augment="ta_wide", random_erase=0.25, hflip_prob=0.0)
    assert "TrivialAugmentWide" in repr(t) and "RandomErasing(p=0.25" in repr(t) and "HorizontalFlip" not in repr(t)
    image = _image(3, 40, 40, 3)
    ref = _reference_train_preset(24, InterpolationMode.BILINEAR, "ta_wide", 9, 3, 0.25, hflip_prob=0.0)
    for seed in range(5):  # hflip_prob=0 draws nothing, as the references leave the flip out
        torch.manual_seed(seed)
        expected = ref(image)
        assert torch.equal(t(image, seed=seed), expected)
    with pytest.raises(ValueError, match="not 'bicubic'"):
        data.classification_transform(True, 24, auto_augment="ra", interpolation="bicubic")
    with pytest.raises(ValueError, match="interpolation must be"):
        data.classification_transform(True, 24, interpolation="lanczos")
    with pytest.raises(ValueError, match="auto_augment must be"):
        data.classification_transform(True, 24, auto_augment="trivial")


def _batch(n=4, c=3, h=10, w=13, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g), torch.randint(classes, (n,), generator=g)


def test_mixup_and_cutmix_reproduce_v2_draws():
    images, labels = _batch()
    probabilities = torch.softmax(torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), -1)
    for alpha in (1.0, 0.2):
        for seed in range(12):
            for ours, ref in ((augment.mixup, v2.MixUp), (augment.cutmix, v2.CutMix)):
                torch.manual_seed(seed)
                ei, el = ref(alpha=alpha, num_classes=5)(images, labels)
                oi, ol = ours(images, labels, alpha, 5, seed=seed)
                assert torch.equal(oi, ei) and torch.equal(ol, el), (ref.__name__, alpha, seed)
                torch.manual_seed(seed)
                ei, el = ref(alpha=alpha)(images, probabilities)  # probability labels, num_classes left out
                oi, ol = ours(images, probabilities, alpha, seed=seed)
                assert torch.equal(oi, ei) and torch.equal(ol, el), (ref.__name__, alpha, seed)


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.2, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mixup_cutmix_choice_matches_references(mixup_alpha, cutmix_alpha):
    # references/classification/transforms.py get_mixup_cutmix(use_v2=True).
    choices = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=5))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=5))
    ref = v2.RandomChoice(choices)
    ours = augment.mixup_cutmix(mixup_alpha, cutmix_alpha, num_classes=5)
    assert ours.enabled and "RandomChoice(" in repr(ours)
    images, labels = _batch(n=3, h=9, w=9, seed=2)
    for seed in range(16):
        torch.manual_seed(seed)
        ei, el = ref(images, labels)
        oi, ol = ours(images, labels, seed=seed)
        assert torch.equal(oi, ei) and torch.equal(ol, el), seed


def test_mixup_cutmix_refusals():
    images, labels = _batch()
    assert not augment.mixup_cutmix().enabled
    with pytest.raises(ValueError, match="nothing to apply"):
        augment.mixup_cutmix()(images, labels)
    with pytest.raises(ValueError, match="num_classes must be passed"):
        augment.mixup(images, labels)
    with pytest.raises(ValueError, match="batch size"):
        augment.cutmix(images[:3], labels, num_classes=5)
    with pytest.raises(ValueError, match="4 dims"):
        augment.cutmix(images[0], labels, num_classes=5)
    with pytest.raises(ValueError, match="must match num_classes"):
        augment.mixup(images, torch.zeros(4, 3), num_classes=5)
    with pytest.raises(ValueError, match=">= 0"):
        augment.mixup_cutmix(-1.0, 0.0, 5)
