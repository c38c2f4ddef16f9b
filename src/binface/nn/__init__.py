"""Building blocks: quantizers, binary layers, pooling, attention blocks, margin heads."""

from binface.nn.layers import (
    BinaryConv2d,
    BinaryDepthwiseConv2d,
    BinaryLinear,
    BinarySeparableConv2d,
    QuantConv2d,
    QuantLinear,
    WeightSpec,
    apply_weight_clip,
    pad_same,
    same_padding,
    set_kernel_quantization,
)
from binface.nn.margin import AdaFace, ArcFace, CombinedMargin, CosFace, PartialFC, make_margin
from binface.nn.norm import BatchNorm1d, BatchNorm2d
from binface.nn.pooling import BlurPool2d, MaxPool2dSame
from binface.nn.quantizers import (
    ApproxSign,
    DoReFa,
    MagnitudeAwareSign,
    Quantizer,
    RPReLU,
    RSign,
    SteSign,
    SwishSign,
    get_quantizer,
)

__all__ = [
    "AdaFace",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "PartialFC",
    "make_margin",
    "BatchNorm1d",
    "BatchNorm2d",
    "ApproxSign",
    "BinaryConv2d",
    "BinaryDepthwiseConv2d",
    "BinaryLinear",
    "BinarySeparableConv2d",
    "BlurPool2d",
    "DoReFa",
    "MagnitudeAwareSign",
    "MaxPool2dSame",
    "QuantConv2d",
    "QuantLinear",
    "Quantizer",
    "RPReLU",
    "RSign",
    "SteSign",
    "SwishSign",
    "WeightSpec",
    "apply_weight_clip",
    "get_quantizer",
    "pad_same",
    "same_padding",
    "set_kernel_quantization",
]
