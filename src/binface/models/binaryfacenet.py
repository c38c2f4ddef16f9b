"""BinaryFaceNet (Luevano, 2022) for 112x112 faces, 128-D embedding.

Every "qconv" is a conv with DoReFa(k=1, mode="weights") on input and kernel (both
+-1, sign(0) = -1), weight clip, no bias, then BN and, unless said, a PReLU with
one slope per channel. The SE block squeezes with a chain of strided grouped
qconvs instead of global pooling; a global and two local feature blocks follow,
then two float embedding convs down to 1x1x128. Layout: docs/architectures.md.

The embedding convs belong to the backbone: the original Keras model ends with
them and the seed's Table 2 counts them (336,640 of its 340,744 32-bit parameters
and 1,441,792 of its 3,850,752 32-bit MACs). The head only flattens the 1x1 map,
so ``embedding_size`` (default 128) is the width of those convs.

The separable convs' pointwise kernels multiply the float depthwise output, so
their MACs are 1-bit in the larq count but not runtime-binary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn import (
    BatchNorm2d,
    BinaryConv2d,
    BinaryDepthwiseConv2d,
    BinarySeparableConv2d,
    DoReFa,
    PReLU,
)
from binface.nn.channel_scale import channel_scale
from binface.nn.fused_stem import can_fuse, pointwise_stem
from binface.nn.scale_sign import scale_sign_pad


def _dorefa() -> DoReFa:
    return DoReFa(k_bit=1, mode="weights")


def _binary_kw() -> dict:
    return {"input_quantizer": _dorefa(), "kernel_quantizer": _dorefa(), "kernel_clip": 1.0}


class QConv(nn.Sequential):
    """DoReFa binary conv (no bias), BN, optional PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: str = "valid",
                 groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            BinaryConv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups,
                         bias=False, **_binary_kw()),
            BatchNorm2d(cout),
        ]
        if act:
            layers.append(PReLU(cout))
        super().__init__(*layers)


class ConvBNPReLU(nn.Sequential):
    """Float conv (no bias), BN, PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, bias=False), BatchNorm2d(cout),
                         PReLU(cout))


class BinarySqueezeExcite(nn.Module):
    """SE whose squeeze is a chain of strided qconvs (112 -> 54 -> 18 -> 5 -> 1)."""

    def __init__(self, channels: int = 64, reduction: int = 16) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(
            QConv(channels, channels, 5, stride=2, groups=4),
            QConv(channels, channels, 3, stride=3, groups=4),
            QConv(channels, channels, 1, stride=4, groups=2),
            QConv(channels, channels, 1, stride=5),
        )
        self.excite = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=True),
            PReLU(channels // reduction),
            nn.Conv2d(channels // reduction, channels, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_scale(x, self.excite(self.squeeze(x)))

    def takes_signs(self) -> bool:
        """Whether the squeeze's first conv quantizes its input with one-bit DoReFa
        without padding, and no module of this SE has hooks, so that the squeeze can be
        given sign(x) made elsewhere (``forward`` itself is then not called)."""
        conv = self.squeeze[0][0]
        q = conv.input_quantizer
        return (isinstance(q, DoReFa) and q.pm_one and conv.pad_mode == "valid"
                and not conv._is_pointwise_depthwise() and _no_hooks(self))

    def gate_from_signs(self, signs: torch.Tensor) -> torch.Tensor:
        """The per-channel gate ``forward`` multiplies x by, given ``signs`` = DoReFa(x)
        (``takes_signs``)."""
        conv = self.squeeze[0][0]
        s = F.conv2d(signs, conv.quantized_weight(), conv.bias, conv.stride, 0,
                     conv.dilation, conv.groups)
        for m in [*list(self.squeeze[0])[1:], *list(self.squeeze)[1:]]:
            s = m(s)
        return self.excite(s)


def _no_hooks(module: nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   or m._backward_pre_hooks for m in module.modules())


class GlobalFeatureBlock(nn.Module):
    """Binary 1x1 convs and binary depthwise 1x1s (with bias) over three skip joins."""

    def __init__(self, c: int = 64) -> None:
        super().__init__()
        dw = {"input_quantizer": _dorefa(), "depthwise_quantizer": _dorefa(), "kernel_clip": 1.0,
              "bias_clip": 1.0, "bias": True}
        self.skip = BinaryConv2d(c, c, 1, bias=True, **_binary_kw())
        self.act_skip = PReLU(c)
        self.dw1 = BinaryDepthwiseConv2d(c, 1, **dw)
        self.act_join1 = PReLU(c)
        self.conv = BinaryConv2d(c, c, 1, bias=True, **_binary_kw())
        self.act_join2 = PReLU(c)
        self.dw2 = BinaryDepthwiseConv2d(c, 1, **dw)
        self.act_out = PReLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.act_skip(self.skip(x))
        j1 = self.act_join1(x + self.dw1(s1))
        j2 = self.act_join2(self.conv(j1) + s1)
        return self.act_out(j2 + self.dw2(j2) + x)


class LocalFeatureBlock(nn.Module):
    """Strided qconv, then binary separable 1x1s and qconvs over two skip joins (/2)."""

    def __init__(self, c: int = 64) -> None:
        super().__init__()
        sep = {"input_quantizer": _dorefa(), "depthwise_quantizer": _dorefa(),
               "pointwise_quantizer": _dorefa(), "kernel_clip": 1.0, "bias": True}
        self.down = QConv(c, c, 3, stride=2, padding="same")
        self.sep1 = BinarySeparableConv2d(c, c, 1, **sep)
        self.act_sep1 = PReLU(c)
        self.local2 = QConv(c, c, 1, act=False)
        self.act_join1 = PReLU(c)
        self.local3 = QConv(c, c, 1)
        self.sep2 = BinarySeparableConv2d(c, c, 1, **sep)
        self.act_out = PReLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.down(x)
        p1 = self.act_sep1(self.sep1(s))
        j1 = self.act_join1(s + self.local2(p1))
        p2 = self.sep2(self.local3(j1))
        return self.act_out(p1 + p2)


class BinaryFaceNetEmbedding(nn.Sequential):
    """Float 3x3/3 conv (14 -> 4), float 4x4 conv (4 -> 1), each BN + PReLU."""

    def __init__(self, in_channels: int = 64, embedding_size: int = 128) -> None:
        super().__init__(
            ConvBNPReLU(in_channels, embedding_size, 3, stride=3),
            ConvBNPReLU(embedding_size, embedding_size, 4),
        )


class BinaryFaceNetBackbone(nn.Sequential):
    """Everything up to the 1x1 x ``embedding_size`` map (what Table 2 counts)."""

    def __init__(self, channels: int = 64, embedding_size: int = 128) -> None:
        super().__init__(
            ConvBNPReLU(3, channels, 1),
            BinarySqueezeExcite(channels),
            QConv(channels, channels, 3, stride=2, padding="same", groups=4),
            GlobalFeatureBlock(channels),
            LocalFeatureBlock(channels),
            LocalFeatureBlock(channels),
            BinaryFaceNetEmbedding(channels, embedding_size),
        )
        self.out_channels = embedding_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In training, the stem and the SE's first quantizer run fused
        (``binface.nn.fused_stem``: the 112x112x64 map walked twice instead of about
        fifteen times per step); same values and gradients, otherwise the modules."""
        stem, se, down = self[0], self[1], self[2]
        if se.takes_signs() and _no_hooks(stem) and can_fuse(x, *stem):
            h, signs = pointwise_stem(x, *stem)
            gate = se.gate_from_signs(signs)
            conv = down[0]
            if _takes_padded_signs(conv) and _no_hooks(down) and gate.dtype == h.dtype:
                # the SE's x * s, DoReFa and the conv's "same" pad in one pass
                qp = scale_sign_pad(h, gate, conv.pads(h.shape[-2], h.shape[-1]))
                y = F.conv2d(qp, conv.quantized_weight(), conv.bias, conv.stride, 0,
                             conv.dilation, conv.groups)
                y = down[2](down[1](y))
            else:
                y = down(channel_scale(h, gate))
            for m in list(self)[3:]:
                y = m(y)
            return y
        return super().forward(x)


def _takes_padded_signs(conv: nn.Module) -> bool:
    """A binary conv whose input quantizer is one-bit DoReFa, padded "same" with zeros:
    ``scale_sign_pad`` can make its padded input."""
    q = getattr(conv, "input_quantizer", None)
    return (isinstance(conv, BinaryConv2d) and isinstance(q, DoReFa) and q.pm_one
            and conv.pad_mode == "same" and conv.pad_values == 0.0
            and not conv._is_pointwise_depthwise())


@register_model("binaryfacenet", "binary", "BinaryFaceNet: DoReFa 1-bit SE, global and local "
                "feature blocks with binary separable convs, 128-D, 0.5 M params")
def binaryfacenet(backbone_only: bool = False, embedding_size: int = 128) -> FaceModel:
    backbone = BinaryFaceNetBackbone(64, embedding_size)
    head = None if backbone_only else nn.Flatten(1)
    return FaceModel(backbone, head, "binaryfacenet", input_size=(112, 112),
                     embedding_size=embedding_size)
