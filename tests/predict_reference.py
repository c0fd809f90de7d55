"""Prediction in plain Python, the reference torchtl's Predictor is held to: torchvision's model with
load_state_dict(torch.load(path)), torchvision.transforms.v2's evaluation transform as the model
file's metadata states it, softmax (classification) or the logits resized to the image and argmax
(segmentation)."""
import warnings

import torch
import torchvision
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

import torchtl


def torchvision_twin(path):
    meta = torchtl.read_model_metadata(path)
    args = dict(meta["builder_args"])
    if "norm_layer" in args:
        args["norm_layer"] = {"BatchNorm2d": torch.nn.BatchNorm2d, "SyncBatchNorm": torch.nn.BatchNorm2d,
                              "FrozenBatchNorm2d": torchvision.ops.FrozenBatchNorm2d}[args["norm_layer"]]
    if meta["task"] == "segmentation":
        model = getattr(torchvision.models.segmentation, meta["builder"])(weights=None, weights_backbone=None, **args)
    else:
        model = getattr(torchvision.models, meta["builder"])(weights=None, **args)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval(), meta


def read_rgb(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        return decode_image(path, mode=ImageReadMode.RGB)


def python_classify(path, images, topk):
    model, meta = torchvision_twin(path)
    t = meta["transform"]
    transform = v2.Compose([v2.Resize(t["resize_size"], antialias=True), v2.CenterCrop(t["crop_size"]),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(t["mean"], t["std"])])
    batch = torch.stack([transform(read_rgb(p)) for p in images])
    with torch.no_grad():
        probs = model(batch).softmax(1)
    values, indices = probs.topk(min(topk, probs.shape[1]), 1)
    return values, indices


def python_segment(path, images):
    model, meta = torchvision_twin(path)
    t = meta["transform"]
    transform = v2.Compose([v2.Resize(t["resize_size"], antialias=True), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(t["mean"], t["std"])])
    masks = []
    for p in images:
        image = read_rgb(p)
        with torch.no_grad():
            out = model(transform(image)[None])["out"]
            out = torch.nn.functional.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
        masks.append(out.argmax(1)[0])
    return masks
