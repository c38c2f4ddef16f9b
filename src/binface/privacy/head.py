"""The attacked model and its margin head, as an attacker who holds the weights rebuilds
them (the white-box setting of federated training and of a leaked model file)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from binface.errors import BinfaceError


class MarginHead(nn.Module):
    """Class centres ``weight`` (C, D) and an ArcFace margin: ``forward(emb, labels)`` is the
    mean softmax cross-entropy of the margin logits.

    The same loss as training's ``PartialFC`` (all classes, one process), written with
    plain differentiable ops because gradient inversion differentiates the gradient.
    """

    def __init__(self, weight: torch.Tensor, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise BinfaceError(f"class centres must be (classes, dim), got {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.s, self.m = float(s), float(m)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1.0, 1.0)
        if labels is None or self.m == 0.0:
            return self.s * cos
        target = cos.gather(1, labels.view(-1, 1))
        theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
        new = torch.where(theta + self.m <= math.pi, torch.cos(theta + self.m),
                          target - self.m * math.sin(self.m))
        return self.s * cos.scatter(1, labels.view(-1, 1), new)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if emb.shape[1] != self.weight.shape[1]:
            raise BinfaceError(f"embeddings of size {emb.shape[1]} do not fit class centres "
                               f"of size {self.weight.shape[1]}")
        return F.cross_entropy(self.logits(emb, labels), labels)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class Target:
    """What an attack works on: the model (eval mode), its head (None: none known), its
    name, family and whether it was trained (a checkpoint) or is a zoo initialisation."""

    model: nn.Module
    head: MarginHead | None
    name: str
    family: str
    trained: bool
    precision: str  # "float", "int8" (QAT) or "binary"


def load_attack_target(spec: str | os.PathLike | nn.Module, num_classes: int | None = None,
                       seed: int = 0, s: float = 32.0, m: float = 0.3) -> Target:
    """A zoo name (random weights drawn from ``seed``; a random head of ``num_classes``
    centres), a checkpoint (its own head, when it holds one) or a module."""
    from binface.models.loading import is_checkpoint_path, load_checkpoint, load_model
    from binface.nn.qat import is_qat
    from binface.train.loop import embedding_size

    if isinstance(spec, (str, os.PathLike)) and not is_checkpoint_path(spec):
        with torch.random.fork_rng(devices=[]):  # the same initialisation on every run
            torch.manual_seed(seed)
            lm = load_model(spec)
    else:
        lm = load_model(spec)
    head = None
    trained = False
    if isinstance(spec, (str, os.PathLike)) and is_checkpoint_path(spec):
        trained = True
        ck = load_checkpoint(spec)
        hs = ck.get("head_state") or {}
        cfg = (ck.get("config") or {}).get("head") or {}
        if torch.is_tensor(hs.get("weight")):
            margin = str(cfg.get("margin", "arcface"))
            if margin not in ("arcface",):
                raise BinfaceError(f"{spec}: its head uses the {margin} margin; the attacks "
                                   "rebuild ArcFace heads only")
            head = MarginHead(hs["weight"], float(cfg.get("s", s)), float(cfg.get("m", m)))
    elif num_classes:
        g = torch.Generator().manual_seed(seed)
        dim = embedding_size(lm.model, torch.device("cpu"))
        head = MarginHead(torch.randn(num_classes, dim, generator=g) * 0.01, s, m)
    precision = "binary" if lm.family == "binary" else ("int8" if is_qat(lm.model)
                                                       else "float")
    return Target(lm.model, head, lm.name, lm.family, trained, precision)
