"""Margin-based softmax heads: ArcFace, CosFace, the combined margin, AdaFace; Partial FC.

A margin turns the cosine logits ``cos(theta_j)`` (normalised embedding against
normalised class centre) into the target logit ``cos(m1 * theta_y + m2) - m3`` and
scales everything by ``s`` (docs/training.md, "Margin head and Partial FC").
ArcFace is (1, 0.5, 0) with s = 64, CosFace (1, 0, 0.4). AdaFace adapts the margin
to each sample's feature norm, a proxy for image quality.

:class:`PartialFC` owns the class centres. Under ``torch.distributed`` each rank
keeps a shard of them; the embeddings of the whole global batch are gathered, each
rank scores them against its positive centres plus random negatives up to
``sample_rate`` of its shard, and a distributed softmax cross-entropy joins the
shards. With one process and ``sample_rate=1.0`` it is the plain margin head.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class CombinedMargin(nn.Module):
    """cos(m1 theta + m2) - m3 on the target logit, then scale s.

    Where theta + m2 would pass pi (cos no longer decreasing), the ArcFace fallback
    cos(theta) - m2 sin(m2) keeps the target logit monotone in theta.
    """

    needs_norms = False

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms=None) -> torch.Tensor:
        """``cosine`` (B, C) in [-1, 1]; ``labels`` (B,) with -1 for "target not here"."""
        cosine = cosine.clamp(-1.0, 1.0)
        rows = torch.nonzero(labels >= 0).squeeze(1)
        if rows.numel() == 0:
            return cosine * self.s
        cols = labels[rows]
        target = cosine[rows, cols]
        if self.m1 != 1.0 or self.m2 != 0.0:
            theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
            angle = self.m1 * theta + self.m2
            new = torch.where(angle <= math.pi, torch.cos(angle),
                              target - self.m2 * math.sin(self.m2))
        else:
            new = target
        new = new - self.m3
        logits = cosine.index_put((rows, cols), new)
        return logits * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}"


def ArcFace(s: float = 64.0, m: float = 0.5) -> CombinedMargin:  # noqa: N802 - a margin name
    """ArcFace: additive angular margin cos(theta + m)."""
    return CombinedMargin(s, 1.0, m, 0.0)


def CosFace(s: float = 64.0, m: float = 0.4) -> CombinedMargin:  # noqa: N802 - a margin name
    """CosFace: additive cosine margin cos(theta) - m."""
    return CombinedMargin(s, 1.0, 0.0, m)


class AdaFace(nn.Module):
    """AdaFace (Kim et al. 2022): the margin adapts to the feature norm.

    The norm ||f|| is standardised with running batch mean and std (momentum
    ``t_alpha``), scaled by ``h`` and clipped to [-1, 1] (``ms``); the target logit is
    cos(theta - m ms) - (m + m ms). Norms come from the un-normalised embeddings.
    """

    needs_norms = True

    def __init__(self, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01):
        super().__init__()
        self.s, self.m, self.h, self.t_alpha = float(s), float(m), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor,
                norms: torch.Tensor | None = None) -> torch.Tensor:
        if norms is None:
            raise ValueError("AdaFace needs the embedding norms")
        cosine = cosine.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        norms = norms.detach().clamp(0.001, 100.0).reshape(-1)
        if self.training:
            with torch.no_grad():
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * norms.mean())
                std = norms.std() if norms.numel() > 1 else torch.zeros_like(norms.mean())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
        ms = ((norms - self.batch_mean) / (self.batch_std + 1e-3) * self.h).clamp(-1.0, 1.0)
        rows = torch.nonzero(labels >= 0).squeeze(1)
        if rows.numel() == 0:
            return cosine * self.s
        cols = labels[rows]
        theta = torch.acos(cosine[rows, cols])
        angle = (theta - self.m * ms[rows]).clamp(1e-3, math.pi - 1e-3)
        new = torch.cos(angle) - (self.m + self.m * ms[rows])
        return cosine.index_put((rows, cols), new) * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, h={self.h}"


MARGINS: dict[str, Callable[..., nn.Module]] = {
    # name -> builder(s, m1, m2, m3, m); ``m`` None takes the head's own default
    "arcface": lambda s, m1, m2, m3, m: ArcFace(s, 0.5 if m is None else m),
    "cosface": lambda s, m1, m2, m3, m: CosFace(s, 0.4 if m is None else m),
    "combined": lambda s, m1, m2, m3, m: CombinedMargin(s, m1, m2, m3),
    "adaface": lambda s, m1, m2, m3, m: AdaFace(s, 0.4 if m is None else m),
}


def make_margin(name: str, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                m: float | None = None) -> nn.Module:
    """A margin by name, one of :data:`MARGINS` (``arcface``, ``cosface``, ...)."""
    if name not in MARGINS:
        raise ValueError(f"unknown margin {name!r}; known: {', '.join(MARGINS)}")
    return MARGINS[name](s, m1, m2, m3, m)


# ---------------------------------------------------------------- distributed pieces
def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Half-precision logits lose the margin: compute in float32 (float64 stays)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of its own slice.

    The sum is multiplied by the world size because DDP then averages the backbone
    gradients over ranks: together they give exactly the single-process gradient of
    the loss over the global batch (every rank computes that same loss).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        _, world = _world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = [p.shape[0] for p in parts]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        rank, world = _world()
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.rows[:rank])
        return grad[start:start + ctx.rows[rank]] * world


class _DistSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy over logits whose classes are split across ranks.

    ``labels`` index into the local columns, or are -1 where the target lives on
    another rank. Every rank returns the same loss over the whole global batch.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, world = _world()
        logits = _at_least_fp32(logits)
        mx = logits.max(dim=1, keepdim=True).values
        if world > 1:
            dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        e = torch.exp(logits - mx)
        denom = e.sum(dim=1, keepdim=True)
        if world > 1:
            dist.all_reduce(denom)
        prob = e / denom
        here = labels >= 0
        p_target = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
        p_target[here] = prob[here, labels[here]]
        if world > 1:
            dist.all_reduce(p_target)
        loss = -torch.log(p_target.clamp_min(1e-30)).mean()
        ctx.save_for_backward(prob, labels)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        prob, labels = ctx.saved_tensors
        grad = prob.clone()
        here = labels >= 0
        grad[here, labels[here]] -= 1.0
        return grad * (grad_loss / prob.shape[0]), None


class PartialFC(nn.Module):
    """Class centres (sharded over ranks) + margin + softmax cross-entropy.

    ``forward(embeddings, labels)`` takes the local batch (un-normalised embeddings
    and global class labels) and returns the loss over the global batch. Also
    returns the logits of the local shard for distillation via :meth:`cosine`.
    """

    def __init__(self, margin: nn.Module, embedding_size: int, num_classes: int,
                 sample_rate: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        rank, world = _world()
        self.rank, self.world = rank, world
        self.num_classes = num_classes
        per = num_classes // world + (1 if rank < num_classes % world else 0)
        self.class_start = rank * (num_classes // world) + min(rank, num_classes % world)
        self.num_local = per
        self.sample_rate = float(sample_rate)
        self.num_sample = max(1, int(self.sample_rate * per))
        self.margin = margin
        self.weight = nn.Parameter(self._init_shard(embedding_size, seed))

    def _init_shard(self, dim: int, seed: int, chunk: int = 65536) -> torch.Tensor:
        """Rows of one N(0, 0.01) matrix of all classes, drawn in order from ``seed``.

        Every rank draws the same full sequence (chunk by chunk, keeping only its
        own rows), so sharded centres equal the single-process ones.
        """
        g = torch.Generator().manual_seed(seed)
        end = self.class_start + self.num_local
        rows = []
        for lo in range(0, end, chunk):
            block = torch.normal(0.0, 0.01, (min(chunk, end - lo), dim), generator=g)
            a, b = max(self.class_start - lo, 0), min(end - lo, block.shape[0])
            if a < b:
                rows.append(block[a:b])
        return torch.cat(rows) if rows else torch.zeros(0, dim)

    def _sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the centres to score, and labels remapped into them."""
        if self.num_sample >= self.num_local:
            return torch.arange(self.num_local, device=self.weight.device), local_labels
        positive = torch.unique(local_labels[local_labels >= 0])
        score = torch.rand(self.num_local, device=self.weight.device)
        score[positive] = 2.0  # positives always kept
        keep = max(self.num_sample, positive.numel())
        index = torch.sort(torch.topk(score, k=keep).indices).values
        remap = torch.full((self.num_local,), -1, dtype=torch.long, device=self.weight.device)
        remap[index] = torch.arange(index.numel(), device=self.weight.device)
        out = local_labels.clone()
        out[local_labels >= 0] = remap[local_labels[local_labels >= 0]]
        return index, out

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long().reshape(-1)
        if self.world > 1:
            embeddings = _AllGather.apply(embeddings)
            gathered = [torch.empty_like(labels) for _ in range(self.world)]
            dist.all_gather(gathered, labels)
            labels = torch.cat(gathered)
        local = labels - self.class_start
        local[(local < 0) | (local >= self.num_local)] = -1
        index, local = self._sample(local)
        emb = _at_least_fp32(embeddings)
        norms = emb.norm(dim=1, keepdim=True)
        w = self.weight[index].to(emb.dtype)
        cosine = F.linear(F.normalize(emb), F.normalize(w))
        if getattr(self.margin, "needs_norms", False):
            logits = self.margin(cosine, local, norms)
        else:
            logits = self.margin(cosine, local)
        return _DistSoftmaxCE.apply(logits, local)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of (local) embeddings to this rank's class centres, no margin."""
        emb = _at_least_fp32(embeddings)
        return F.linear(F.normalize(emb), F.normalize(self.weight.to(emb.dtype)))

    def extra_repr(self) -> str:
        return (f"classes={self.num_classes} (local {self.class_start}.."
                f"{self.class_start + self.num_local - 1}), sample_rate={self.sample_rate}")
