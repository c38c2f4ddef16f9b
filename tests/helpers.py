"""Small models and data shared by the training tests (and the torchrun worker)."""

import torch
from torch import nn
from torch.utils.data import Dataset


class RandomFaces(Dataset):
    """Fixed random 3x112x112 'images' with labels cycling over ``num_classes``."""

    def __init__(self, n: int = 48, num_classes: int = 6, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 112, 112, generator=g)
        self.y = torch.arange(n) % num_classes
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class TinyNet(nn.Module):
    """A BatchNorm-free embedder (per-rank BN statistics would differ under DDP)."""

    embedding_size = 16
    model_name = "tiny"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 5, stride=8)
        self.fc = nn.Linear(4 * 14 * 14, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class TinyBinaryNet(nn.Module):
    """One binary conv between float layers: enough to watch the binary recipe."""

    embedding_size = 8
    model_name = "tiny_binary"
    family = "binary"

    def __init__(self) -> None:
        super().__init__()
        from binface.nn import BinaryConv2d

        self.stem = nn.Conv2d(3, 4, 8, stride=8)
        self.bconv = BinaryConv2d(4, 4, 3, padding="same", kernel_clip=1.0)
        self.fc = nn.Linear(4 * 14 * 14, 8)

    def forward(self, x):
        return self.fc(self.bconv(self.stem(x)).flatten(1))


def register_test_models() -> None:
    """Put the tiny models in the registry so checkpoints of them can be rebuilt."""
    from binface.models import list_models, register_model

    if "test_tiny" not in list_models():
        register_model("test_tiny", "cnn", "test-only tiny embedder")(
            lambda embedding_size=16, **_: _sized(TinyNet(), embedding_size))


def _sized(net: TinyNet, size: int) -> TinyNet:
    if size != 16:
        net.fc = nn.Linear(4 * 14 * 14, size)
        net.embedding_size = size
    net.model_name = "test_tiny"
    return net
