"""BinaryFaceFormer: binary separable / additive self-attention for 112x112 faces.

The seed's first proposed avenue: MobileViTv2's separable and SwiftFormer's additive
attention built from binary blocks (``binface.nn.binary_attention``). A float stem
(conv 3x3/2, 112 -> 56), three binary stages that each halve the map with a binary
3x3/2 projection (56 -> 28 -> 14 -> 7), binary 3x3 projections at 28 and 14 px, one
binary attention + feed-forward block at 14 and one at 7 px, and a float GDC head
(depthwise 7x7, dense to ``embedding_size``, BN), as MobileFaceNet ends.

Budget (checked at construction, and by tests on the profiler's count): at least
90% of all MACs (conv, dense and attention products) 1-bit, at least 90% of those
runtime-binary, weight memory at most 2x BinaryFaceNet's. Layout and measured
figures: docs/architectures.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from binface.errors import BinfaceError
from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.binary_attention import BinaryFormerBlock, BinaryProjection
from binface.nn.norm import BatchNorm1d, BatchNorm2d
from binface.nn.prelu import PReLU

BINARYFACENET_KIB = 1351.2  # BinaryFaceNet's weight memory (seed Table 2)
MIN_1BIT_SHARE = 0.9
MAX_MEMORY_KIB = 2 * BINARYFACENET_KIB


class GDCHead(nn.Sequential):
    """Float head: BN, depthwise 7x7 (global depthwise conv), flatten, dense, BN1d."""

    def __init__(self, channels: int, embedding_size: int, size: int = 7) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, size, groups=channels, bias=False),
            BatchNorm2d(channels),
            nn.Flatten(1),
            nn.Linear(channels, embedding_size, bias=False),
            BatchNorm1d(embedding_size),
        )


class BinaryFaceFormerBackbone(nn.Sequential):
    """Float stem, binary stages at 28, 14 and 7 px with attention at 14 and 7 px."""

    def __init__(self, channels: Sequence[int], attention: str, heads: int,
                 mlp_ratio: int, depths: Sequence[int] = (1, 1)) -> None:
        c0, c1, c2, c3 = channels
        d2, d3 = depths
        super().__init__(
            nn.Sequential(nn.Conv2d(3, c0, 3, stride=2, padding=1, bias=False),
                          BatchNorm2d(c0), PReLU(c0)),
            BinaryProjection(c0, c1, 3, stride=2),
            BinaryProjection(c1, c1, 3),
            BinaryProjection(c1, c2, 3, stride=2),
            BinaryProjection(c2, c2, 3),
            *(BinaryFormerBlock(c2, attention, heads, mlp_ratio) for _ in range(d2)),
            BinaryProjection(c2, c3, 3, stride=2),
            *(BinaryFormerBlock(c3, attention, heads, mlp_ratio) for _ in range(d3)),
        )
        self.out_channels = c3


def planned_budget(channels: Sequence[int], attention: str, heads: int, mlp_ratio: int,
                   embedding_size: int, depths: Sequence[int] = (1, 1)) -> dict[str, float]:
    """The profiler's MAC and memory figures of a configuration, in closed form.

    Lets a bad configuration fail at construction without a forward pass;
    tests check that it equals :func:`binface.profile.profile`'s count.
    """
    c0, c1, c2, c3 = channels
    bits = {1: 0, 32: 0}  # MACs
    p1 = p32 = 0  # parameters
    stem = 56 * 56 * 27 * c0
    bits[32] += stem
    p32 += 27 * c0 + 3 * c0  # kernel, BN mean + var, PReLU slope

    def proj(cin: int, cout: int, k: int, px: int, act: bool = True, bn: bool = True,
             shift: bool = True) -> None:
        nonlocal p1, p32
        bits[1] += px * px * k * k * cin * cout
        p1 += k * k * cin * cout
        p32 += (cin if shift else 0) + (2 * cout if bn else 0) + (cout if act else 0)

    def block(c: int, px: int) -> None:
        n = px * px
        if attention == "sep":
            proj(c, heads + 2 * c, 1, px, act=False)
            proj(c, c, 1, px, shift=False)
        else:
            proj(c, 2 * c, 1, px, act=False)
            proj(c, heads, 1, px, act=False, bn=False)
            proj(c, c, 1, px, shift=False)
            proj(c, c, 1, px)
        bits[32] += n * c  # the context / global-query sum
        proj(c, mlp_ratio * c, 1, px)
        proj(mlp_ratio * c, c, 1, px)

    proj(c0, c1, 3, 28)
    proj(c1, c1, 3, 28)
    proj(c1, c2, 3, 14)
    proj(c2, c2, 3, 14)
    for _ in range(depths[0]):
        block(c2, 14)
    proj(c2, c3, 3, 7)
    for _ in range(depths[1]):
        block(c3, 7)
    head = 49 * c3 + c3 * embedding_size
    bits[32] += head
    p32 += head + 2 * c3 + 2 * embedding_size
    total = bits[1] + bits[32]
    return {"macs_1bit": bits[1], "macs_32bit": bits[32], "share_1bit": bits[1] / total,
            "params_1bit": p1, "params_32bit": p32, "memory_kib": (p1 + 32 * p32) / 8 / 1024}


def _check(name: str, channels: Sequence[int], attention: str, heads: int, mlp_ratio: int,
           embedding_size: int, depths: Sequence[int]) -> None:
    """One-line ``BinfaceError`` for a configuration that breaks the shapes or the budget."""
    chans = tuple(channels)
    if len(chans) != 4 or not all(isinstance(c, int) and c > 0 for c in chans):
        raise BinfaceError(f"{name}: channels must be 4 positive integers, got {channels!r}")
    if not (isinstance(embedding_size, int) and embedding_size > 0):
        raise BinfaceError(f"{name}: embedding_size must be a positive integer, "
                           f"got {embedding_size!r}")
    if not (isinstance(heads, int) and heads > 0) or chans[2] % heads or chans[3] % heads:
        raise BinfaceError(f"{name}: {heads!r} attention heads cannot divide the attention "
                           f"widths {chans[2]} and {chans[3]}")
    if not (isinstance(mlp_ratio, int) and mlp_ratio > 0):
        raise BinfaceError(f"{name}: mlp_ratio must be a positive integer, got {mlp_ratio!r}")
    ds = tuple(depths)
    if len(ds) != 2 or not all(isinstance(d, int) and d >= 0 for d in ds):
        raise BinfaceError(f"{name}: depths must be 2 non-negative integers (attention blocks "
                           f"at 14 and 7 px), got {depths!r}")
    for a, b in zip(chans, chans[1:], strict=False):
        if a % b and b % a:
            raise BinfaceError(f"{name}: widths {a} -> {b}: one must divide the other "
                               "(the real-valued shortcut repeats or averages channels)")
    plan = planned_budget(chans, attention, heads, mlp_ratio, embedding_size, ds)
    if plan["share_1bit"] < MIN_1BIT_SHARE:
        raise BinfaceError(f"{name}: only {100 * plan['share_1bit']:.1f}% of the MACs would be "
                           f"1-bit (the budget is {100 * MIN_1BIT_SHARE:.0f}%): widen the binary "
                           "stages or narrow the stem / head")
    if plan["memory_kib"] > MAX_MEMORY_KIB:
        raise BinfaceError(f"{name}: {plan['memory_kib']:,.0f} KiB of weights is over the "
                           f"budget of {MAX_MEMORY_KIB:,.0f} KiB (2x BinaryFaceNet)")


def _build(name: str, attention: str, backbone_only: bool, embedding_size: int,
           channels: Sequence[int], heads: int, mlp_ratio: int,
           depths: Sequence[int]) -> FaceModel:
    _check(name, channels, attention, heads, mlp_ratio, embedding_size, depths)
    backbone = BinaryFaceFormerBackbone(tuple(channels), attention, heads, mlp_ratio,
                                        tuple(depths))
    head = None if backbone_only else GDCHead(backbone.out_channels, embedding_size)
    return FaceModel(backbone, head, name, input_size=(112, 112), embedding_size=embedding_size)


DEFAULT_CHANNELS = (32, 64, 128, 256)
DEFAULT_DEPTHS = (2, 2)  # attention blocks at 14 and 7 px


@register_model("binaryfaceformer_sep", "binary", "BinaryFaceFormer: binary stages with "
                "binary separable self-attention (MobileViTv2) at 14 and 7 px, 128-D")
def binaryfaceformer_sep(backbone_only: bool = False, embedding_size: int = 128,
                         channels: Sequence[int] = DEFAULT_CHANNELS, heads: int = 1,
                         mlp_ratio: int = 2, depths: Sequence[int] = DEFAULT_DEPTHS) -> FaceModel:
    return _build("binaryfaceformer_sep", "sep", backbone_only, embedding_size, channels, heads,
                  mlp_ratio, depths)


@register_model("binaryfaceformer_add", "binary", "BinaryFaceFormer: binary stages with "
                "binary efficient additive attention (SwiftFormer) at 14 and 7 px, 128-D")
def binaryfaceformer_add(backbone_only: bool = False, embedding_size: int = 128,
                         channels: Sequence[int] = DEFAULT_CHANNELS, heads: int = 1,
                         mlp_ratio: int = 2, depths: Sequence[int] = DEFAULT_DEPTHS) -> FaceModel:
    return _build("binaryfaceformer_add", "add", backbone_only, embedding_size, channels, heads,
                  mlp_ratio, depths)
