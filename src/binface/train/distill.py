"""Distillation from a trained binface model (any family) into the student being trained.

A typical pairing is a transformer teacher and a binary student (docs/training.md).
The losses, each with its own weight and schedule (config ``distill``; the
schedules are :data:`binface.train.optim.WEIGHT_SCHEDULES`):

- ``cosine``: 1 - cos(P s, t) between the student's embedding s (projected by a
  learned linear map P when the sizes differ) and the teacher's t.
- ``l2``: mean squared error between P s and t.
- ``margin`` (MarginDistillation, Svitov & Alyamkin 2020): the student is scored
  against the teacher's (frozen) class centres with an ArcFace margin that is
  larger for samples the teacher places closer to their centre, so the student is
  pulled towards the teacher's angles.
- ``logit_kd``: KL divergence between the softened softmax over the teacher's class
  centres of teacher and student (temperature T, scaled by T^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from binface.errors import BinfaceError
from binface.models.loading import load_checkpoint, model_from_checkpoint
from binface.train.config import DISTILL_LOSSES, distill_spec
from binface.train.optim import weight_at


class Distiller(nn.Module):
    """Teacher (frozen), projection and the distillation losses."""

    def __init__(self, teacher_path: str, student_dim: int, cfg: dict, scale: float = 64.0):
        super().__init__()
        ckpt = load_checkpoint(teacher_path)
        self.teacher = model_from_checkpoint(ckpt, where=f"teacher {teacher_path}")
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher_name = ckpt["model"]
        self.teacher_dim = int(ckpt.get("embedding_size") or 0)
        if not self.teacher_dim:
            raise BinfaceError(f"teacher checkpoint {teacher_path} does not record its "
                               "embedding size")
        head = ckpt.get("head_state") or {}
        centres = head.get("weight")
        self.register_buffer("centres", F.normalize(centres.float(), dim=1)
                             if centres is not None else torch.zeros(0, self.teacher_dim))
        self.losses = {n: distill_spec(cfg[n], n) for n in DISTILL_LOSSES}
        self.losses = {n: ws for n, ws in self.losses.items() if ws[0] > 0}
        if not self.losses:
            raise BinfaceError("a teacher is set but every distill loss weight is 0")
        needs_centres = {"margin", "logit_kd"} & set(self.losses)
        if needs_centres and self.centres.numel() == 0:
            raise BinfaceError(f"distill losses {sorted(needs_centres)} need the teacher's class "
                               f"centres, which checkpoint {teacher_path} does not hold")
        self.temperature = float(cfg["temperature"])
        self.margin_m = float(cfg["margin_m"])
        self.scale = float(scale)
        self.proj = (nn.Identity() if student_dim == self.teacher_dim
                     else nn.Linear(student_dim, self.teacher_dim, bias=False))

    def check_classes(self, num_classes: int) -> None:
        needs = {"margin", "logit_kd"} & set(self.losses)
        if needs and self.centres.shape[0] != num_classes:
            raise BinfaceError(f"the teacher has {self.centres.shape[0]} class centres but the "
                               f"training set has {num_classes} classes: losses {sorted(needs)} "
                               "need the same identities")

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher always runs in inference mode
        return self

    def forward(self, student_emb: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            t = self.teacher(images).float().reshape(images.shape[0], -1)
        s = self.proj(student_emb.float())
        parts: dict[str, torch.Tensor] = {}
        if "cosine" in self.losses:
            parts["cosine"] = (1 - F.cosine_similarity(s, t, dim=1)).mean()
        if "l2" in self.losses:
            parts["l2"] = F.mse_loss(s, t)
        if {"margin", "logit_kd"} & set(self.losses):
            cos_t = F.normalize(t, dim=1) @ self.centres.T
            cos_s = F.normalize(s, dim=1) @ self.centres.T
            if "margin" in self.losses:
                parts["margin"] = self._margin_loss(cos_s, cos_t, labels)
            if "logit_kd" in self.losses:
                temp = self.temperature
                log_p_s = F.log_softmax(self.scale * cos_s / temp, dim=1)
                p_t = F.softmax(self.scale * cos_t / temp, dim=1)
                parts["logit_kd"] = F.kl_div(log_p_s, p_t, reduction="batchmean") * temp * temp
        total_loss = student_emb.new_zeros(())
        logged = {}
        for name, value in parts.items():
            weight, sched = self.losses[name]
            w = weight_at(weight, sched, step, total)
            total_loss = total_loss + w * value
            logged[f"distill_{name}"] = float(value.detach())
        return total_loss, logged

    def _margin_loss(self, cos_s: torch.Tensor, cos_t: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(labels), device=labels.device)
        theta_t = torch.acos(cos_t[rows, labels].clamp(-1 + 1e-7, 1 - 1e-7))
        lo, hi = theta_t.min(), theta_t.max()
        # samples the teacher places nearest their centre get the largest margin
        m = self.margin_m * ((hi - theta_t) / (hi - lo).clamp_min(1e-6))
        theta_s = torch.acos(cos_s[rows, labels].clamp(-1 + 1e-7, 1 - 1e-7))
        target = torch.where(theta_s + m <= math.pi, torch.cos(theta_s + m),
                             cos_s[rows, labels] - m * torch.sin(m))
        logits = cos_s.index_put((rows, labels), target) * self.scale
        return F.cross_entropy(logits, labels)
