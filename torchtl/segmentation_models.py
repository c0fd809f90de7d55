"""segmentation_models_pytorch's architectures on its ResNet encoders, with C++ modules inside.

The builders take smp's names, arguments and defaults (``Unet(encoder_name="resnet34",
encoder_weights=None, in_channels=3, classes=21)``), and the models have smp's module tree, so
``state_dict()`` keys, order and shapes equal smp's model built with the same arguments, and
a seeded build draws what smp's constructor draws. segmentation_models_pytorch is not needed at
run time: the Python classes below carry smp's forward code over the C++ module's tensors, and
run where ``torchtl._module`` says Python runs (hooks, fx, export, ...); a plain call runs C++.

Nothing is downloaded: ``encoder_weights`` takes a local ``torch.save`` file, a traced archive, a
state dict, a torchvision model or ``WeightsEnum`` (its ``fc`` is dropped, as smp drops it);
smp's names of downloadable weights (``"imagenet"``, ``"ssl"``, ...) raise an error that says so.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from torchtl import _C
from torchtl._module import Model, Sequential, _is_plain_call, _Mirror, wrap
from torchtl.models import _CLASSES as _RESNET_CLASSES
from torchtl.segmentation import ASPP, ASPPConv, ASPPPooling
from torchtl.weights import WeightsMismatchError, read_state_dict

__all__ = ["Unet", "UnetPlusPlus", "FPN", "PSPNet", "Linknet", "PAN", "DeepLabV3Plus", "ENCODERS", "ARCHITECTURES"]

# smp's ResNet and ResNeXt encoders (encoders/resnet.py), which torchtl builds in C++.
ENCODERS = tuple(_C.resnet_encoder_names())
ARCHITECTURES = tuple(_C.segmentation_architectures())

# Names smp resolves to files on the Hugging Face Hub.
_DOWNLOADABLE = ("imagenet", "ssl", "swsl", "instagram")


# -- smp's modules: its forward code over the C++ tensors -----------------------------------------


class ResNetEncoder(_Mirror, nn.Module):
    """smp's ResNetEncoder: torchvision's ResNet without avgpool and fc, returning a list of features."""

    _forward_options = ("_depth",)

    def forward(self, x):
        if _is_plain_call(x) and self._tree.runs_cpp(self):
            return _C.forward_list(self._cpp_module, x)
        features = [x]
        if self._depth >= 1:
            x = self.conv1(x)
            x = self.bn1(x)
            x = self.relu(x)
            features.append(x)
        if self._depth >= 2:
            x = self.maxpool(x)
            x = self.layer1(x)
            features.append(x)
        if self._depth >= 3:
            x = self.layer2(x)
            features.append(x)
        if self._depth >= 4:
            x = self.layer3(x)
            features.append(x)
        if self._depth >= 5:
            x = self.layer4(x)
            features.append(x)
        return features

    @property
    def out_channels(self):
        return self._out_channels[: self._depth + 1]

    @property
    def output_stride(self):
        return min(self._output_stride, 2**self._depth)


class Conv2dReLU(Sequential):
    """smp's Conv2dReLU: Conv2d, norm, ReLU(inplace=True)."""


class SegmentationHead(Sequential):
    """smp's SegmentationHead: Conv2d, Upsample or Identity, Activation."""


class ClassificationHead(Sequential):
    """smp's ClassificationHead (aux_params): pooling, Flatten, Dropout, Linear, Activation."""


class _SCSEModule(nn.Module):
    def forward(self, x):
        return x * self.cSE(x) + x * self.sSE(x)


class SCSEModule(_Mirror, _SCSEModule):
    _torchvision_class = _SCSEModule


class _Attention(nn.Module):
    def forward(self, x):
        return self.attention(x)


class Attention(_Mirror, _Attention):
    _torchvision_class = _Attention


class _Activation(nn.Module):
    def forward(self, x):
        return self.activation(x)


class Activation(_Mirror, _Activation):
    _torchvision_class = _Activation


class UnetDecoderBlock(_Mirror, nn.Module):
    """smp's UnetDecoderBlock; its forward takes several arguments, so it runs in Python when called
    on its own (the whole model's plain call runs it in C++)."""

    _forward_options = ("interpolation_mode",)

    def forward(self, feature_map, target_height, target_width, skip_connection=None):
        feature_map = F.interpolate(feature_map, size=(target_height, target_width), mode=self.interpolation_mode)
        if skip_connection is not None:
            feature_map = torch.cat([feature_map, skip_connection], dim=1)
            feature_map = self.attention1(feature_map)
        feature_map = self.conv1(feature_map)
        feature_map = self.conv2(feature_map)
        feature_map = self.attention2(feature_map)
        return feature_map


class UnetDecoder(_Mirror, nn.Module):
    """smp's UnetDecoder (runs in Python when called on its own)."""

    def forward(self, features):
        spatial_shapes = [feature.shape[2:] for feature in features]
        spatial_shapes = spatial_shapes[::-1]
        features = features[1:]
        features = features[::-1]
        head = features[0]
        skip_connections = features[1:]
        x = self.center(head)
        for i, decoder_block in enumerate(self.blocks):
            height, width = spatial_shapes[i + 1]
            skip_connection = skip_connections[i] if i < len(skip_connections) else None
            x = decoder_block(x, height, width, skip_connection=skip_connection)
        return x


class SeparableConv2d(Sequential):
    """smp's SeparableConv2d: a depthwise and a pointwise Conv2d."""


class ASPPSeparableConv(Sequential):
    """smp's ASPPSeparableConv: SeparableConv2d, BatchNorm2d, ReLU."""


class DeepLabV3PlusDecoder(_Mirror, nn.Module):
    """smp's DeepLabV3PlusDecoder (runs in Python when called on its own)."""

    def forward(self, features):
        aspp_features = self.aspp(features[-1])
        aspp_features = self.up(aspp_features)
        high_res_features = self.block1(features[2])
        concat_features = torch.cat([aspp_features, high_res_features], dim=1)
        fused_features = self.block2(concat_features)
        return fused_features


class ModuleChain(Sequential):
    """An nn.Sequential of smp's (Linknet's and PSPNet's blocks); C++ runs it as a ModuleChain."""


class ModuleDict(_Mirror, nn.ModuleDict):
    """torch::nn::ModuleDict as an nn.ModuleDict (UnetPlusPlus's blocks; its owner runs them)."""

    _torchvision_class = nn.ModuleDict

    def forward(self, input):
        raise NotImplementedError("ModuleDict has no forward; its owner runs its modules")


class UnetPlusPlusDecoderBlock(_Mirror, nn.Module):
    """smp's unetplusplus DecoderBlock (runs in Python when called on its own)."""

    _forward_options = ("interpolation_mode",)

    def forward(self, x, skip=None):
        x = F.interpolate(x, scale_factor=2.0, mode=self.interpolation_mode)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
            x = self.attention1(x)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.attention2(x)
        return x


class UnetPlusPlusDecoder(_Mirror, nn.Module):
    """smp's UnetPlusPlusDecoder (runs in Python when called on its own)."""

    def forward(self, features):
        features = features[1:]
        features = features[::-1]
        dense_x = {}
        for layer_idx in range(len(self.in_channels) - 1):
            for depth_idx in range(self.depth - layer_idx):
                if layer_idx == 0:
                    output = self.blocks[f"x_{depth_idx}_{depth_idx}"](features[depth_idx], features[depth_idx + 1])
                    dense_x[f"x_{depth_idx}_{depth_idx}"] = output
                else:
                    dense_l_i = depth_idx + layer_idx
                    cat_features = [dense_x[f"x_{idx}_{dense_l_i}"] for idx in range(depth_idx + 1, dense_l_i + 1)]
                    cat_features = torch.cat(cat_features + [features[dense_l_i + 1]], dim=1)
                    dense_x[f"x_{depth_idx}_{dense_l_i}"] = self.blocks[f"x_{depth_idx}_{dense_l_i}"](
                        dense_x[f"x_{depth_idx}_{dense_l_i - 1}"], cat_features)
        dense_x[f"x_{0}_{self.depth}"] = self.blocks[f"x_{0}_{self.depth}"](dense_x[f"x_{0}_{self.depth - 1}"])
        return dense_x[f"x_{0}_{self.depth}"]


class _Conv3x3GNReLU(nn.Module):
    def forward(self, x):
        x = self.block(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return x


class Conv3x3GNReLU(_Mirror, _Conv3x3GNReLU):
    _torchvision_class = _Conv3x3GNReLU
    _forward_options = ("upsample",)


class _SegmentationBlock(nn.Module):
    def forward(self, x):
        return self.block(x)


class SegmentationBlock(_Mirror, _SegmentationBlock):
    _torchvision_class = _SegmentationBlock


class FPNBlock(_Mirror, nn.Module):
    """smp's FPNBlock (runs in Python when called on its own)."""

    _forward_options = ("interpolation_mode",)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2.0, mode=self.interpolation_mode)
        skip = self.skip_conv(skip)
        x = x + skip
        return x


class MergeBlock(_Mirror, nn.Module):
    """smp's MergeBlock: "add" or "cat" the pyramid's levels."""

    _forward_options = ("policy",)

    def forward(self, x):
        if self.policy == "add":
            return torch.stack(x).sum(dim=0)
        return torch.cat(x, dim=1)


class FPNDecoder(_Mirror, nn.Module):
    """smp's FPNDecoder (runs in Python when called on its own)."""

    def forward(self, features):
        c2, c3, c4, c5 = features[-4:]
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4)
        p3 = self.p3(p4, c3)
        p2 = self.p2(p3, c2)
        s5 = self.seg_blocks[0](p5)
        s4 = self.seg_blocks[1](p4)
        s3 = self.seg_blocks[2](p3)
        s2 = self.seg_blocks[3](p2)
        x = self.merge([s5, s4, s3, s2])
        x = self.dropout(x)
        return x


class TransposeX2(Sequential):
    """smp's TransposeX2: ConvTranspose2d, norm, ReLU."""


class LinknetDecoderBlock(_Mirror, nn.Module):
    """smp's linknet DecoderBlock (runs in Python when called on its own)."""

    def forward(self, x, skip=None):
        x = self.block(x)
        if skip is not None and skip.shape[1] != 0:
            x = x + skip
        return x


class LinknetDecoder(_Mirror, nn.Module):
    """smp's LinknetDecoder (runs in Python when called on its own)."""

    def forward(self, features):
        features = features[1:]
        features = features[::-1]
        x = features[0]
        skips = features[1:]
        for i, decoder_block in enumerate(self.blocks):
            skip = skips[i] if i < len(skips) else None
            x = decoder_block(x, skip)
        return x


class _PSPBlock(nn.Module):
    def forward(self, x):
        height, width = x.shape[2:]
        x = self.pool(x)
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=True)


class PSPBlock(_Mirror, _PSPBlock):
    _torchvision_class = _PSPBlock


class _PSPModule(nn.Module):
    def forward(self, x):
        xs = [block(x) for block in self.blocks] + [x]
        return torch.cat(xs, dim=1)


class PSPModule(_Mirror, _PSPModule):
    _torchvision_class = _PSPModule


class PSPDecoder(_Mirror, nn.Module):
    """smp's PSPDecoder (runs in Python when called on its own)."""

    def forward(self, features):
        x = features[-1]
        x = self.psp(x)
        x = self.conv(x)
        x = self.dropout(x)
        return x


class _ConvBnRelu(nn.Module):
    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        if self.add_relu:
            x = self.activation(x)
        if self.interpolate:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return x


class ConvBnRelu(_Mirror, _ConvBnRelu):
    _torchvision_class = _ConvBnRelu
    _forward_options = ("add_relu", "interpolate")


class _FPABlock(nn.Module):
    def forward(self, x):
        _, _, height, width = x.shape
        up = dict(mode=self.upscale_mode, align_corners=self.align_corners)
        branch1_output = F.interpolate(self.branch1(x), size=(height, width), **up)
        middle_output = self.mid(x)
        x1 = self.down1(x)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        x3 = F.interpolate(x3, size=(height // 4, width // 4), **up)
        x2 = self.conv2(x2)
        x = x2 + x3
        x = F.interpolate(x, size=(height // 2, width // 2), **up)
        x1 = self.conv1(x1)
        x = x + x1
        x = F.interpolate(x, size=(height, width), **up)
        x = torch.mul(x, middle_output)
        return x + branch1_output


class FPABlock(_Mirror, _FPABlock):
    _torchvision_class = _FPABlock
    _forward_options = ("upscale_mode", "align_corners")


class GAUBlock(_Mirror, nn.Module):
    """smp's GAUBlock (runs in Python when called on its own)."""

    _forward_options = ("interpolation_mode", "align_corners")

    def forward(self, x, y):
        height, width = x.shape[2:]
        y_up = F.interpolate(y, size=(height, width), mode=self.interpolation_mode, align_corners=self.align_corners)
        x = self.conv2(x)
        y = self.conv1(y)
        z = torch.mul(x, y)
        return y_up + z


class PANDecoder(_Mirror, nn.Module):
    """smp's PANDecoder (runs in Python when called on its own)."""

    def forward(self, features):
        features = features[2:]
        out = self.fpa(features[-1])
        if hasattr(self, "gau3"):
            out = self.gau3(features[2], out)
        if hasattr(self, "gau2"):
            out = self.gau2(features[1], out)
        if hasattr(self, "gau1"):
            out = self.gau1(features[0], out)
        return out


class SegmentationModel(Model, nn.Module):
    """smp's SegmentationModel: encoder -> decoder -> segmentation_head (and classification_head).

    A plain call runs the whole model in C++; otherwise smp's forward runs over the same tensors.
    """

    requires_divisible_input_shape = True

    def __init__(self, *args, **kwargs):
        """Built by ``__new__`` (smp's signature, on each architecture); nothing is left to do here."""

    def forward(self, x):
        if _is_plain_call(x) and self._tree.runs_cpp(self):
            out = _C.forward_list(self._cpp_module, x)
            return out[0] if len(out) == 1 else tuple(out)
        if not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input_shape(x)
        features = self.encoder(x)
        decoder_output = self.decoder(features)
        masks = self.segmentation_head(decoder_output)
        if self.classification_head is not None:
            labels = self.classification_head(features[-1])
            return masks, labels
        return masks

    def _configure(self, args: dict) -> None:
        """Sets the plain attributes smp's decoder modules read in their Python forward."""

    def check_input_shape(self, x):
        if not self.requires_divisible_input_shape:
            return
        h, w = x.shape[-2:]
        output_stride = self.encoder.output_stride
        if h % output_stride != 0 or w % output_stride != 0:
            new_h = (h // output_stride + 1) * output_stride if h % output_stride != 0 else h
            new_w = (w // output_stride + 1) * output_stride if w % output_stride != 0 else w
            raise RuntimeError(
                f"Wrong input shape height={h}, width={w}. Expected image height and width "
                f"divisible by {output_stride}. Consider pad your images to shape ({new_h}, {new_w}).")

    @torch.inference_mode()
    def predict(self, x):
        """smp's predict: eval mode, inference mode, forward."""
        if self.training:
            self.eval()
        return self(x)

    def train(self, mode: bool = True):
        # smp's: a frozen encoder's norm layers stay in eval mode.
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for name, module in self.named_children():
            if self._is_encoder_frozen and name == "encoder":
                continue
            module.train(mode)
        return self

    def _set_encoder_trainable(self, mode: bool):
        for param in self.encoder.parameters():
            param.requires_grad = mode
        for module in self.encoder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._NormBase):
                module.train(mode)
        self._is_encoder_frozen = not mode

    def freeze_encoder(self):
        """smp's freeze_encoder: no gradients for the encoder, its batch norms in eval mode."""
        return self._set_encoder_trainable(False)

    def unfreeze_encoder(self):
        return self._set_encoder_trainable(True)


class Unet(SegmentationModel):
    """segmentation_models_pytorch.Unet, run by torchtl::segmentation_models::Unet in C++.

    smp's arguments and defaults. encoder_weights: None, a local file, a state dict, a torchvision
    model or WeightsEnum; smp's downloadable names (the default "imagenet" among them) raise, as
    torchtl downloads nothing. decoder_use_norm: "batchnorm"/True or "identity"/False. activation:
    smp's names, or a torch.nn module class (which then runs in Python).
    """

    requires_divisible_input_shape = False
    _name_prefix = "u"

    def __new__(cls, encoder_name: str = "resnet34", encoder_depth: int = 5, encoder_weights="imagenet",
                decoder_use_norm="batchnorm", decoder_channels=(256, 128, 64, 32, 16), decoder_attention_type=None,
                decoder_interpolation: str = "nearest", in_channels: int = 3, classes: int = 1, activation=None,
                aux_params: dict | None = None, **kwargs):
        decoder_use_norm = _renamed_argument("decoder_use_norm", decoder_use_norm, kwargs, "decoder_use_batchnorm")
        return _build(cls, encoder_weights, dict(
            encoder_name=encoder_name, encoder_depth=encoder_depth, decoder_use_norm=decoder_use_norm,
            decoder_channels=list(decoder_channels), decoder_attention_type=decoder_attention_type,
            decoder_interpolation=decoder_interpolation, in_channels=in_channels, classes=classes,
            activation=activation, aux_params=aux_params), kwargs)

    def _configure(self, args):
        for block in self.decoder.blocks:
            object.__setattr__(block, "interpolation_mode", args["decoder_interpolation"])


class UnetPlusPlus(SegmentationModel):
    """segmentation_models_pytorch.UnetPlusPlus, run by torchtl::segmentation_models::UnetPlusPlus in C++.

    smp's arguments and defaults; encoder_weights, decoder_use_norm and activation as for Unet.
    """

    _name_prefix = "unetplusplus"
    __new__ = Unet.__new__  # the same arguments and defaults

    def _configure(self, args):
        decoder = self.decoder
        channels = self.encoder.out_channels[1:][::-1]
        object.__setattr__(decoder, "in_channels", [channels[0]] + list(args["decoder_channels"][:-1]))
        object.__setattr__(decoder, "skip_channels", list(channels[1:]) + [0])
        object.__setattr__(decoder, "out_channels", list(args["decoder_channels"]))
        object.__setattr__(decoder, "depth", len(decoder.in_channels) - 1)
        for block in decoder.blocks.values():
            object.__setattr__(block, "interpolation_mode", args["decoder_interpolation"])
            object.__setattr__(block, "is_empty", False)


class FPN(SegmentationModel):
    """segmentation_models_pytorch.FPN, run by torchtl::segmentation_models::FPN in C++.

    smp's arguments and defaults; encoder_weights and activation as for Unet.
    """

    _name_prefix = "fpn"

    def __new__(cls, encoder_name: str = "resnet34", encoder_depth: int = 5, encoder_weights="imagenet",
                decoder_pyramid_channels: int = 256, decoder_segmentation_channels: int = 128,
                decoder_merge_policy: str = "add", decoder_dropout: float = 0.2,
                decoder_interpolation: str = "nearest", in_channels: int = 3, classes: int = 1, activation=None,
                upsampling: int = 4, aux_params: dict | None = None, **kwargs):
        return _build(cls, encoder_weights, dict(
            encoder_name=encoder_name, encoder_depth=encoder_depth, decoder_pyramid_channels=decoder_pyramid_channels,
            decoder_segmentation_channels=decoder_segmentation_channels, decoder_merge_policy=decoder_merge_policy,
            decoder_dropout=float(decoder_dropout), decoder_interpolation=decoder_interpolation,
            in_channels=in_channels, classes=classes, activation=activation, upsampling=upsampling,
            aux_params=aux_params), kwargs)

    def _configure(self, args):
        decoder = self.decoder
        policy = args["decoder_merge_policy"]
        segmentation = args["decoder_segmentation_channels"]
        object.__setattr__(decoder, "out_channels", segmentation if policy == "add" else segmentation * 4)
        for block in (decoder.p4, decoder.p3, decoder.p2):
            object.__setattr__(block, "interpolation_mode", args["decoder_interpolation"])
        for block in decoder.modules():
            if isinstance(block, Conv3x3GNReLU):
                object.__setattr__(block, "upsample", block is not decoder.seg_blocks[3].block[0])
        object.__setattr__(decoder.merge, "policy", policy)


class PSPNet(SegmentationModel):
    """segmentation_models_pytorch.PSPNet, run by torchtl::segmentation_models::PSPNet in C++.

    smp's arguments and defaults (encoder_depth 3, upsampling 8); encoder_weights as for Unet.
    """

    _name_prefix = "psp"

    def __new__(cls, encoder_name: str = "resnet34", encoder_weights="imagenet", encoder_depth: int = 3,
                psp_out_channels: int = 512, decoder_use_norm="batchnorm", psp_dropout: float = 0.2,
                in_channels: int = 3, classes: int = 1, activation=None, upsampling: int = 8,
                aux_params: dict | None = None, **kwargs):
        decoder_use_norm = _renamed_argument("decoder_use_norm", decoder_use_norm, kwargs, "psp_use_batchnorm")
        return _build(cls, encoder_weights, dict(
            encoder_name=encoder_name, encoder_depth=encoder_depth, psp_out_channels=psp_out_channels,
            decoder_use_norm=decoder_use_norm, psp_dropout=float(psp_dropout), in_channels=in_channels,
            classes=classes, activation=activation, upsampling=upsampling,
            aux_params=aux_params or None), kwargs)  # smp's `if aux_params:`: {} builds no head

    def _configure(self, args):
        for block in self.decoder.psp.blocks:
            object.__setattr__(block, "pool_size", block.pool[0].output_size[0])


class Linknet(SegmentationModel):
    """segmentation_models_pytorch.Linknet, run by torchtl::segmentation_models::Linknet in C++.

    smp's arguments and defaults; encoder_weights, decoder_use_norm and activation as for Unet.
    """

    _name_prefix = "link"

    def __new__(cls, encoder_name: str = "resnet34", encoder_depth: int = 5, encoder_weights="imagenet",
                decoder_use_norm="batchnorm", in_channels: int = 3, classes: int = 1, activation=None,
                aux_params: dict | None = None, **kwargs):
        decoder_use_norm = _renamed_argument("decoder_use_norm", decoder_use_norm, kwargs, "decoder_use_batchnorm")
        return _build(cls, encoder_weights, dict(
            encoder_name=encoder_name, encoder_depth=encoder_depth, decoder_use_norm=decoder_use_norm,
            in_channels=in_channels, classes=classes, activation=activation, aux_params=aux_params), kwargs)


class PAN(SegmentationModel):
    """segmentation_models_pytorch.PAN, run by torchtl::segmentation_models::PAN in C++.

    smp's arguments and defaults (encoder_output_stride 16 or 32; inputs of at least 128 px);
    encoder_weights and activation as for Unet.
    """

    _name_prefix = "pan"

    def __new__(cls, encoder_name: str = "resnet34", encoder_depth: int = 5, encoder_weights="imagenet",
                encoder_output_stride: int = 16, decoder_channels: int = 32, decoder_interpolation: str = "bilinear",
                in_channels: int = 3, classes: int = 1, activation=None, upsampling: int = 4,
                aux_params: dict | None = None, **kwargs):
        decoder_interpolation = _renamed_argument("decoder_interpolation", decoder_interpolation, kwargs, "upscale_mode")
        return _build(cls, encoder_weights, dict(
            encoder_name=encoder_name, encoder_depth=encoder_depth, encoder_output_stride=encoder_output_stride,
            decoder_channels=decoder_channels, decoder_interpolation=decoder_interpolation, in_channels=in_channels,
            classes=classes, activation=activation, upsampling=upsampling, aux_params=aux_params), kwargs)

    def _configure(self, args):
        mode = args["decoder_interpolation"]
        gau_attention = set()
        for module in self.decoder.modules():
            if isinstance(module, FPABlock):
                object.__setattr__(module, "upscale_mode", "bilinear")
                object.__setattr__(module, "align_corners", True)
            elif isinstance(module, GAUBlock):
                object.__setattr__(module, "interpolation_mode", mode)
                object.__setattr__(module, "align_corners", True if mode == "bilinear" else None)
                gau_attention.add(id(module.conv1[1]))  # smp's add_relu=False
            elif isinstance(module, ConvBnRelu):
                object.__setattr__(module, "add_relu", id(module) not in gau_attention)
                object.__setattr__(module, "interpolate", False)


class DeepLabV3Plus(SegmentationModel):
    """segmentation_models_pytorch.DeepLabV3Plus, run by torchtl::segmentation_models::DeepLabV3Plus in C++.

    smp's arguments and defaults (encoder_output_stride 16 or 8, decoder_atrous_rates, separable
    ASPP); like smp's, it keeps the decoder's default initialisation. encoder_weights as for Unet.
    """

    _name_prefix = "deeplabv3plus"

    def __new__(cls, encoder_name: str = "resnet34", encoder_depth: int = 5, encoder_weights="imagenet",
                encoder_output_stride: int = 16, decoder_channels: int = 256, decoder_atrous_rates=(12, 24, 36),
                decoder_aspp_separable: bool = True, decoder_aspp_dropout: float = 0.5, in_channels: int = 3,
                classes: int = 1, activation=None, upsampling: int = 4, aux_params: dict | None = None, **kwargs):
        return _build(cls, encoder_weights, dict(
            encoder_name=encoder_name, encoder_depth=encoder_depth, encoder_output_stride=encoder_output_stride,
            decoder_channels=decoder_channels, decoder_atrous_rates=list(decoder_atrous_rates),
            decoder_aspp_separable=decoder_aspp_separable, decoder_aspp_dropout=float(decoder_aspp_dropout),
            in_channels=in_channels, classes=classes, activation=activation, upsampling=upsampling,
            aux_params=aux_params), kwargs)


_CLASSES = {
    **_RESNET_CLASSES,
    "ResNetEncoder": ResNetEncoder,
    "Conv2dReLU": Conv2dReLU,
    "SegmentationHead": SegmentationHead,
    "ClassificationHead": ClassificationHead,
    "SCSEModule": SCSEModule,
    "Attention": Attention,
    "Activation": Activation,
    "UnetDecoderBlock": UnetDecoderBlock,
    "UnetDecoder": UnetDecoder,
    "ASPP": ASPP,
    "ASPPConv": ASPPConv,
    "ASPPPooling": ASPPPooling,
    "ASPPSeparableConv": ASPPSeparableConv,
    "SeparableConv2d": SeparableConv2d,
    "DeepLabV3PlusDecoder": DeepLabV3PlusDecoder,
    "ModuleChain": ModuleChain,
    "ModuleDict": ModuleDict,
    "UnetPlusPlusDecoderBlock": UnetPlusPlusDecoderBlock,
    "UnetPlusPlusDecoder": UnetPlusPlusDecoder,
    "Conv3x3GNReLU": Conv3x3GNReLU,
    "SegmentationBlock": SegmentationBlock,
    "FPNBlock": FPNBlock,
    "MergeBlock": MergeBlock,
    "FPNDecoder": FPNDecoder,
    "TransposeX2": TransposeX2,
    "LinknetDecoderBlock": LinknetDecoderBlock,
    "LinknetDecoder": LinknetDecoder,
    "PSPBlock": PSPBlock,
    "PSPModule": PSPModule,
    "PSPDecoder": PSPDecoder,
    "ConvBnRelu": ConvBnRelu,
    "FPABlock": FPABlock,
    "GAUBlock": GAUBlock,
    "PANDecoder": PANDecoder,
}


# -- building --------------------------------------------------------------------------------------


def _encoder_state(encoder_name: str, source):
    """The encoder's weights from any torchtl weight source, without a ResNet's fc (as smp drops it)."""
    if isinstance(source, str) and not os.path.exists(source) and source in _DOWNLOADABLE:
        raise RuntimeError(
            f"encoder_weights={source!r} names weights that segmentation_models_pytorch downloads from the "
            "Hugging Face Hub, and torchtl downloads nothing. Pass encoder_weights=None, a local torch.save file "
            f"or state dict of a torchvision {encoder_name}, or a torchvision model or WeightsEnum (read from "
            "torch.hub's cache), e.g. torchvision.models.ResNet34_Weights.IMAGENET1K_V1")
    pairs = [(k, v) for k, v in read_state_dict(source) if k not in ("fc.weight", "fc.bias")]
    if pairs and all(k.startswith("encoder.") for k, _ in pairs):  # a smp model's encoder
        pairs = [(k[len("encoder."):], v) for k, v in pairs]
    return pairs


def _patch_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """smp's patch_first_conv for pretrained weights: summed for 1 channel, else cycled and rescaled."""
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    new_weight = torch.Tensor(weight.shape[0], in_channels, *weight.shape[2:])
    for i in range(in_channels):
        new_weight[:, i] = weight[:, i % 3]
    return new_weight * (3 / in_channels)


def _arguments(args: dict) -> dict:
    """smp's keyword arguments as the C++ builder reads them (no None, lists, flat aux_params)."""
    out = {}
    for name, value in args.items():
        if value is None:
            continue
        if name == "aux_params":
            unknown = set(value) - {"classes", "pooling", "dropout", "activation"}
            if unknown:
                raise TypeError(f"ClassificationHead.__init__() got an unexpected keyword argument '{sorted(unknown)[0]}'")
            for key, item in value.items():
                if key == "dropout":
                    item = float(item or 0.0)
                if item is not None:
                    out[f"aux_params.{key}"] = item
            out.setdefault("aux_params.classes", 1)
            continue
        if name.startswith("decoder_use_norm") and isinstance(value, bool):
            value = "batchnorm" if value else "identity"
        if isinstance(value, (tuple, list)):
            value = [int(v) for v in value]
        out[name] = value
    return out


def _build(root: type, encoder_weights, args: dict, kwargs: dict) -> SegmentationModel:
    arch = root.__name__
    if kwargs:
        raise TypeError(f"{arch}() got an unexpected keyword argument '{next(iter(kwargs))}' "
                        "(smp passes extra arguments to timm encoders only; torchtl builds ResNet encoders)")
    encoder_name = args["encoder_name"]
    if encoder_name not in ENCODERS:
        raise ValueError(f"encoder_name {encoder_name!r} is not supported; torchtl builds: {', '.join(ENCODERS)}")
    state = _encoder_state(encoder_name, encoder_weights) if encoder_weights is not None else None
    activation = args.get("activation")
    python_activation = activation if callable(activation) else None
    cpp_args = dict(args, activation=None if python_activation else activation)
    cpp = _C.segmentation_model(arch, dict(_arguments(cpp_args), encoder_pretrained=state is not None))
    builder_args = dict(args, encoder_weights=None)

    def configure(model):
        encoder = model.encoder
        channels = [3, 64, 64, 128, 256, 512] if encoder_name in ("resnet18", "resnet34") else [3, 64, 256, 512, 1024, 2048]
        channels[0] = args["in_channels"]
        object.__setattr__(encoder, "_depth", args["encoder_depth"])
        object.__setattr__(encoder, "_in_channels", args["in_channels"])
        object.__setattr__(encoder, "_out_channels", channels)
        object.__setattr__(encoder, "_output_stride", args.get("encoder_output_stride", 32))
        if "classification_head" not in model._modules:
            object.__setattr__(model, "classification_head", None)
        model._configure(args)

    model = wrap(cpp, root, _CLASSES, configure=configure, _builder=(__name__, arch, builder_args),
                 _is_encoder_frozen=False, name=f"{root._name_prefix}-{encoder_name}")
    encoder = model.encoder
    if python_activation is not None:
        model.segmentation_head[2].activation = python_activation()
    if state is not None:
        if args["in_channels"] != 3:
            state = [(k, _patch_first_conv(v, args["in_channels"]) if k == "conv1.weight" else v) for k, v in state]
        try:
            _C.load_state_dict(encoder._cpp_module, state, True)
        except ValueError as e:
            raise WeightsMismatchError(f"encoder_weights: {e}") from None
    return model


def _renamed_argument(name: str, value, kwargs: dict, deprecated: str):
    """smp's deprecated spelling of an argument (decoder_use_batchnorm, ...): a warning, and it wins."""
    old = kwargs.pop(deprecated, None)
    if old is not None:
        warnings.warn(f"The usage of {deprecated} is deprecated. Please modify your code for {name}",
                      DeprecationWarning, stacklevel=3)
        return old
    return value
