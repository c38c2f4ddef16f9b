"""BatchNorm that, like Keras, trains on a single value per channel.

PyTorch refuses training-mode batch norm when a channel has one value (batch 1
on a 1x1 map, or batch 1 into a BatchNorm1d embedding layer); Keras computes it:
the batch mean is the value itself, so the normalised output is exactly ``beta``.
binface models use these classes so that training at batch 1 works. The running
statistics are left alone in that case: one value says nothing about a variance.
"""

from __future__ import annotations

import torch
from torch import nn


def _single_value_bn(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    dims = [d for d in range(x.dim()) if d != 1]
    y = x - x.mean(dim=dims, keepdim=True)  # == 0, but keeps the graph connected
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = y * torch.rsqrt(torch.tensor(bn.eps, dtype=x.dtype, device=x.device))
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


class BatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that also trains at batch 1 (Keras behaviour)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return _single_value_bn(self, x)
        return super().forward(x)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also trains on one value per channel (Keras behaviour)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.dim() == 4 and x.numel() == x.shape[1]:
            return _single_value_bn(self, x)
        return super().forward(x)
