"""What every face model shares: the input check and the backbone + head split."""

from __future__ import annotations

import torch
from torch import nn

from binface.errors import InputShapeError
from binface.nn.memory import keep_freed_memory
from binface.nn.norm import BatchNorm1d, BatchNorm2d

DEFAULT_INPUT_SIZE = (112, 112)


def check_input(
    x: torch.Tensor,
    size: tuple[int, int] | None = DEFAULT_INPUT_SIZE,
    name: str = "model",
    min_size: int = 32,
) -> None:
    """Raise a one-line ``InputShapeError`` unless ``x`` is (N, 3, H, W) with H, W == size.

    ``size=None`` accepts any H, W of at least ``min_size`` (size-agnostic models).
    """
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    shape = tuple(x.shape)
    if x.dim() != 4 or shape[1] != 3:
        want = f"(N, 3, {size[0]}, {size[1]})" if size else "(N, 3, H, W)"
        raise InputShapeError(f"{name} expects NCHW RGB input of shape {want}, got {shape}")
    if size is not None and shape[2:] != tuple(size):
        raise InputShapeError(
            f"{name} expects {size[0]}x{size[1]} input images (N, 3, {size[0]}, {size[1]}), "
            f"got {shape[2]}x{shape[3]} in shape {shape}"
        )
    if size is None and min(shape[2:]) < min_size:
        raise InputShapeError(
            f"{name} needs images of at least {min_size}x{min_size}, got {shape[2]}x{shape[3]}"
        )


class FaceModel(nn.Module):
    """A backbone followed by a face-embedding head.

    ``backbone`` is what the seed's tables count; ``head`` maps its feature map to
    the embedding (``nn.Identity`` for a backbone-only model). ``input_size`` is
    the spatial size the model needs, or ``None`` when any size works.

    ``train_channels_last``: in training (train mode, autograd on) the input is made
    channels-last, and every convolution after it follows (PyTorch's convolutions
    take the input's layout). oneDNN's grouped and depthwise convolutions and their
    backward passes are about 2.5x faster that way on a CPU, so any training loop
    gets it; inference and export see the input as given. The first training forward
    also makes glibc keep freed memory (:func:`binface.nn.memory.keep_freed_memory`).
    """

    train_channels_last = True

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None,
        name: str,
        input_size: tuple[int, int] | None = DEFAULT_INPUT_SIZE,
        embedding_size: int | None = None,
        min_size: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.model_name = name
        self.input_size = input_size
        self.min_size = min_size
        self.embedding_size = embedding_size if head is not None else None

    @property
    def backbone_only(self) -> bool:
        return isinstance(self.head, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_size, self.model_name, self.min_size)
        if self.training and torch.is_grad_enabled():
            keep_freed_memory()  # once per process: no page faults on every step's maps
            if self.train_channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x))


class LinearEmbeddingHead(nn.Module):
    """Feature map -> embedding: (ReLU,) BN, global average pool, linear, BN1d.

    The insightface "E" output without dropout, pooled first so that it works at
    any feature-map size; ``pre_relu`` for backbones that end on a residual add.
    """

    def __init__(self, in_channels: int, embedding_size: int = 512, pre_relu: bool = False) -> None:
        super().__init__()
        self.act = nn.ReLU() if pre_relu else nn.Identity()
        self.bn_in = BatchNorm2d(in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, embedding_size, bias=False)
        self.bn_out = BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.bn_in(self.act(x))).flatten(1)
        return self.bn_out(self.fc(x))
