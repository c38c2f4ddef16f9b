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
- ``attention`` (attention transfer, Zagoruyko & Komodakis 2017, as Real-to-Binary
  Nets use it between a real and a binary network): for each named pair of stages
  (``distill.attention_pairs``: teacher module, student module), the spatial map
  mean_c f^2 of each output, the larger pooled to the smaller size, flattened and
  L2-normalised; the loss is the squared distance between the two unit maps, summed
  over positions, averaged over the batch and the pairs (0 to 4). Token outputs
  (B, N, C) count as square maps (a leading class token is dropped).
"""

from __future__ import annotations

import difflib
import math

import torch
import torch.nn.functional as F
from torch import nn

from binface.errors import BinfaceError
from binface.models.loading import load_checkpoint, model_from_checkpoint
from binface.train.config import DISTILL_LOSSES, distill_spec
from binface.train.optim import weight_at


def attention_map(f: torch.Tensor, where: str) -> torch.Tensor:
    """(B, H, W) map mean_c f^2 of a (B, C, H, W) map or of (B, N, C) tokens."""
    if isinstance(f, (tuple, list)):
        f = next((t for t in f if isinstance(t, torch.Tensor)), None)
    if not isinstance(f, torch.Tensor) or f.dim() not in (3, 4):
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise BinfaceError(f"distill.attention_pairs: {where} gives {shape}, not a "
                           "(B, C, H, W) map or (B, N, C) tokens")
    if f.dim() == 4:
        return f.float().pow(2).mean(1)
    a = f.float().pow(2).mean(2)
    n = a.shape[1]
    for drop in (0, 1):  # plain tokens, or a class token first
        side = math.isqrt(n - drop)
        if side > 0 and side * side == n - drop:
            return a[:, drop:].reshape(a.shape[0], side, side)
    raise BinfaceError(f"distill.attention_pairs: {where} gives {n} tokens, not a square "
                       "map (with or without a class token)")


def match_maps(a_s: torch.Tensor, a_t: torch.Tensor, where: str) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """Pool the larger of two (B, H, W) maps to the smaller's size."""
    hs, ws = a_s.shape[1:]
    ht, wt = a_t.shape[1:]
    if (hs, ws) == (ht, wt):
        return a_s, a_t
    if hs >= ht and ws >= wt:
        return F.adaptive_avg_pool2d(a_s[:, None], (ht, wt))[:, 0], a_t
    if hs <= ht and ws <= wt:
        return a_s, F.adaptive_avg_pool2d(a_t[:, None], (hs, ws))[:, 0]
    raise BinfaceError(f"distill.attention_pairs: {where}: student map {hs}x{ws} and teacher "
                       f"map {ht}x{wt} cannot be pooled to one size")


def _stage(model: nn.Module, name: str, who: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    top = [n for n in modules if n and n.count(".") <= 1][:16]
    close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise BinfaceError(f"distill.attention_pairs: the {who} has no stage {name!r}; {hint}"
                       f"stages include {', '.join(top)}")


class Distiller(nn.Module):
    """Teacher (frozen), projection and the distillation losses."""

    def __init__(self, teacher_path: str, student_dim: int, cfg: dict, scale: float = 64.0,
                 student: nn.Module | None = None):
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
        self.pairs: list[tuple[str, str]] = []
        self._feats: dict[tuple[str, int], torch.Tensor] = {}
        if "attention" in self.losses:
            self._attach_stages(cfg.get("attention_pairs") or [], student)

    def _attach_stages(self, pairs: list, student: nn.Module | None) -> None:
        """Hooks that keep the paired stages' outputs; one dry run checks the shapes."""
        if not pairs:
            raise BinfaceError("distill.attention is set but distill.attention_pairs names no "
                               "[teacher_stage, student_stage] pair")
        if student is None:
            raise BinfaceError("distill.attention needs the student model")
        self.pairs = [(str(t), str(s)) for t, s in pairs]
        for i, (t_name, s_name) in enumerate(self.pairs):
            for who, model, name in (("teacher", self.teacher, t_name),
                                     ("student", student, s_name)):
                _stage(model, name, who).register_forward_hook(self._keeper((who, i)))
        size = getattr(student, "input_size", None) or (112, 112)
        device = next(student.parameters()).device
        self.teacher.to(device)
        x = torch.zeros(2, 3, *size, device=device)
        modes = [(m, m.training) for m in (student, self.teacher)]
        try:
            with torch.no_grad():
                for m, _ in modes:
                    m.eval()(x)
            self._attention_loss()
        finally:
            for m, mode in modes:
                m.train(mode)
            self._feats.clear()

    def _keeper(self, key: tuple[str, int]):
        def hook(_module, _inputs, output):
            self._feats[key] = output
        return hook

    def _attention_loss(self) -> torch.Tensor:
        total = []
        for i, (t_name, s_name) in enumerate(self.pairs):
            where = f"pair {t_name} -> {s_name}"
            if ("student", i) not in self._feats or ("teacher", i) not in self._feats:
                raise BinfaceError(f"distill.attention_pairs: {where}: a stage did not run in "
                                   "the forward pass")
            a_s = attention_map(self._feats[("student", i)], f"student stage {s_name!r}")
            a_t = attention_map(self._feats[("teacher", i)], f"teacher stage {t_name!r}")
            a_s, a_t = match_maps(a_s, a_t.detach(), where)
            d = F.normalize(a_s.flatten(1), dim=1) - F.normalize(a_t.flatten(1), dim=1)
            total.append(d.pow(2).sum(1).mean())
        return torch.stack(total).mean()

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
        if "attention" in self.losses:
            parts["attention"] = self._attention_loss()
            self._feats.clear()
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
