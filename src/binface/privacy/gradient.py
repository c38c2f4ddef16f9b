"""Gradient inversion: what the gradient of one training step gives away.

The threat of federated or shared training: a client sends the gradient of its loss on
a private batch, and whoever receives it (holding the same weights) tries to rebuild
the batch. binface's face models end in a margin head (ArcFace: normalised class
centres ``W``), which changes the classic analytic attacks:

- **labels** (iDLG, adapted): for a centre row ``c`` the gradient is
  ``dL/dz_c * s / |W_c| * (e - cos_c w_c)``, with ``dL/dz_c = p_c - [c = y]``. The
  true class has ``|p_y - 1|``, the others ``p_c`` (about 1/C early in training), so
  the rows with the largest gradient norms are the batch's labels. (iDLG's sign rule
  does not apply: every row's gradient is orthogonal to its own centre.)
- **embedding** (batch 1): each non-target row's gradient lies in the plane of the
  unit embedding ``e`` and its centre ``w_c``, so ``e`` is the one direction in every
  such plane: the top left singular vector of all the planes' bases side by side. Its
  sign makes ``sum_c <g_c, e>`` positive (``p_c > 0``).
- **a dense first layer with bias**: ``dL/dW_i = dL/db_i * x``, so the input is the
  weight gradient's rows divided by the bias gradient's (exact at batch 1).
- **images** by optimisation (Inverting Gradients, Geiping et al. 2020): dummy images
  whose gradient matches the observed one in cosine, plus total variation, Adam on
  signed gradients, learning-rate drops at 3/8, 5/8 and 7/8 of the steps, several
  restarts (the best match is kept). Binary networks are differentiated through their
  straight-through estimators (``binface.nn.twice_differentiable``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from binface.errors import BinfaceError
from binface.privacy.head import MarginHead

HEAD_KEY = "head.weight"


@contextlib.contextmanager
def training_step(model: nn.Module, train: bool = True) -> Iterator[None]:
    """The model as in a training step (BatchNorm on batch statistics) without moving
    its running statistics: every buffer is put back afterwards."""
    was = model.training
    saved = {k: v.detach().clone() for k, v in model.named_buffers()}
    model.train(train)
    try:
        yield
    finally:
        model.train(was)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved[k])


def _params(model: nn.Module, head: MarginHead) -> list[tuple[str, nn.Parameter]]:
    return [*[(n, p) for n, p in model.named_parameters() if p.requires_grad],
            (HEAD_KEY, head.weight)]


def observe_gradients(model: nn.Module, head: MarginHead | None, images: torch.Tensor,
                      labels: torch.Tensor, train: bool = True) -> dict[str, torch.Tensor]:
    """The gradient of one training step (mean loss over the batch) for every parameter
    of the model and the head's class centres: what a federated client would send."""
    if head is None:
        raise BinfaceError("gradient attacks need the model's margin head (its class "
                           "centres): give a checkpoint that holds one, or a zoo name")
    if images.dim() != 4 or images.shape[0] != labels.numel():
        raise BinfaceError(f"{images.shape[0] if images.dim() == 4 else '?'} images for "
                           f"{labels.numel()} labels")
    if int(labels.max()) >= head.num_classes or int(labels.min()) < 0:
        raise BinfaceError(f"labels must be class indices below {head.num_classes}")
    params = _params(model, head)
    with training_step(model, train):
        loss = head(model(images), labels)
        grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    return {n: g.detach().clone() for (n, _), g in zip(params, grads, strict=True)
            if g is not None}


DEFENCES = ("none", "prune", "sign", "dp")
DEFENCE_HELP = "give none, sign, prune:P (e.g. prune:0.9) or dp:C:SIGMA (e.g. dp:1:0.1)"


def parse_defence(spec: str) -> tuple[str, tuple[float, ...]]:
    """``none``, ``prune:P`` (zero the share P of smallest entries, 0 < P < 1), ``sign``,
    or ``dp:C:SIGMA`` (DP-SGD: per-sample clipping to norm C > 0, Gaussian noise of
    standard deviation SIGMA x C, SIGMA >= 0); returns the kind and its numbers."""
    kind, _, rest = str(spec).partition(":")
    wanted = {"none": 0, "sign": 0, "prune": 1, "dp": 2}
    parts = rest.split(":") if rest else []
    if kind not in DEFENCES or len(parts) != wanted[kind]:
        raise BinfaceError(f"defence {spec!r}: {DEFENCE_HELP}")
    try:
        nums = tuple(float(v) for v in parts)
    except ValueError:
        raise BinfaceError(f"defence {spec!r}: {DEFENCE_HELP}") from None
    if kind == "prune" and not 0.0 < nums[0] < 1.0:
        raise BinfaceError(f"defence {spec!r}: the pruned share must lie strictly between 0 "
                           "and 1")
    if kind == "dp" and not (np.isfinite(nums).all() and nums[0] > 0 and nums[1] >= 0):
        raise BinfaceError(f"defence {spec!r}: DP-SGD needs a clipping norm C > 0 and a "
                           "noise multiplier SIGMA >= 0, both finite")
    return kind, nums


def dp_gradients(model: nn.Module, head: MarginHead | None, images: torch.Tensor,
                 labels: torch.Tensor, clip: float, noise: float,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """The update a DP-SGD client sends for this batch: each sample's gradient clipped
    to norm ``clip`` (over all tensors together), summed, Gaussian noise of standard
    deviation ``noise * clip`` added, divided by the batch size. The clipping and the
    noise are Opacus's (``DPOptimizer.pre_step``).

    Per-sample gradients need samples that do not interact, which BatchNorm on batch
    statistics breaks (the reason Opacus refuses BatchNorm and proposes GroupNorm, a
    different network that must be retrained). binface keeps the network and takes
    the observed step with BatchNorm on its running statistics instead (the frozen-
    statistics fine-tuning of DP practice), then computes each sample's gradient on
    its own (one backward each, so binary layers use their straight-through
    estimators as in training). The attacker's inversion must then use running
    statistics too."""
    from binface.privacy.metrics import need

    optimizers = need("opacus.optimizers")
    per = [observe_gradients(model, head, images[i:i + 1], labels[i:i + 1], train=False)
           for i in range(images.shape[0])]
    params = _params(model, head)
    for name, p in params:
        p.grad_sample = torch.stack([g.get(name, torch.zeros_like(p)) for g in per])
    gen = torch.Generator().manual_seed(seed)
    opt = optimizers.DPOptimizer(torch.optim.SGD([p for _, p in params], lr=0.0),
                                 noise_multiplier=noise, max_grad_norm=clip,
                                 expected_batch_size=images.shape[0], generator=gen)
    try:
        opt.pre_step()
        return {name: p.grad.detach().clone() for name, p in params}
    finally:
        for _, p in params:
            p.grad = None
            for attr in ("grad_sample", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)


def defend(observed: dict[str, torch.Tensor], spec: str = "none") -> dict[str, torch.Tensor]:
    """The gradient a defended client sends instead of ``observed``, per tensor:

    - ``prune:P``: the share P of entries smallest in magnitude set to zero (the pruning
      defence of Zhu et al., Deep Leakage from Gradients, 2019);
    - ``sign``: sign compression, ``sign(g) * mean|g|`` (signSGD with the tensor's mean
      magnitude, so a server can still average updates).

    (``dp:C:SIGMA`` needs the per-sample gradients: :func:`dp_gradients`.)

    The attacker then works from the defended gradient only (labels, embedding and the
    matching target of the image inversion)."""
    kind, nums = parse_defence(spec)
    if kind == "dp":
        raise BinfaceError("the dp defence acts on per-sample gradients: use dp_gradients")
    if kind == "none":
        return observed
    out = {}
    for name, g in observed.items():
        if kind == "sign":
            out[name] = torch.sign(g) * g.abs().mean()
        else:
            k = int(nums[0] * g.numel())  # entries zeroed
            if k == 0:
                out[name] = g.clone()
                continue
            cut = g.abs().flatten().kthvalue(k).values
            out[name] = torch.where(g.abs() > cut, g, torch.zeros_like(g))
    return out


def step_embedding(model: nn.Module, images: torch.Tensor, train: bool = True) -> torch.Tensor:
    """Unit embeddings as the observed training step computed them (BatchNorm on the
    batch's statistics): what :func:`recover_embedding` recovers."""
    with torch.no_grad(), training_step(model, train):
        return torch.nn.functional.normalize(model(images).reshape(len(images), -1))


def recover_labels(head_grad: torch.Tensor, batch: int) -> torch.Tensor:
    """The ``batch`` classes whose centres carry the largest gradient, largest first
    (distinct classes: a batch with a repeated identity loses the repeats)."""
    if batch < 1 or batch > head_grad.shape[0]:
        raise BinfaceError(f"batch {batch} for {head_grad.shape[0]} classes")
    return torch.topk(head_grad.norm(dim=1), batch).indices


def label_accuracy(true: torch.Tensor, recovered: torch.Tensor) -> float:
    """Share of the batch's labels recovered (as multisets: order does not matter)."""
    left = list(int(v) for v in recovered)
    hit = 0
    for t in (int(v) for v in true):
        if t in left:
            left.remove(t)
            hit += 1
    return hit / max(1, len(true))


def recover_embedding(weight: torch.Tensor, head_grad: torch.Tensor,
                      label: int | None = None) -> torch.Tensor:
    """The unit embedding of a batch of one, from the class centres and their gradient
    (see the module docstring); ``label`` (else recovered) is left out of the fit."""
    w = weight.detach().double()
    g = head_grad.detach().double()
    if w.shape != g.shape:
        raise BinfaceError(f"centres {tuple(w.shape)} and gradient {tuple(g.shape)} differ")
    if label is None:
        label = int(recover_labels(head_grad, 1)[0])
    norms = g.norm(dim=1)
    keep = norms > 1e-9 * float(norms.max())
    keep[label] = False
    if int(keep.sum()) < 2:
        raise BinfaceError("too few class centres with a gradient to recover the embedding")
    u1 = torch.nn.functional.normalize(w[keep], dim=1)
    g = g[keep]
    u2 = g - (g * u1).sum(1, keepdim=True) * u1
    u2 = torch.nn.functional.normalize(u2, dim=1)
    basis = torch.cat([u1, u2]).T  # (D, 2R): the planes side by side
    e = torch.linalg.svd(basis, full_matrices=False).U[:, 0]
    if float((g @ e).sum()) < 0:
        e = -e
    return e.float()


def recover_dense_input(grad_w: torch.Tensor, grad_b: torch.Tensor) -> torch.Tensor:
    """The input of a dense layer with bias at batch 1: ``dL/dW_i = dL/db_i x`` for every
    output ``i``, solved in least squares over the outputs with a bias gradient."""
    if grad_w.dim() != 2 or grad_b.shape != (grad_w.shape[0],):
        raise BinfaceError(f"a dense layer's gradients: weight (out, in) and bias (out,), got "
                           f"{tuple(grad_w.shape)} and {tuple(grad_b.shape)}")
    b = grad_b.double()
    if float(b.abs().max()) == 0.0:
        raise BinfaceError("the bias gradient is zero: the input cannot be recovered")
    return ((b @ grad_w.double()) / (b @ b)).float()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (the image prior)."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def gradient_distance(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """1 - cosine of the concatenated gradients (Inverting Gradients' matching loss)."""
    dot = sum((a * b).sum() for a, b in zip(grads, target, strict=True))
    na = torch.sqrt(sum(a.square().sum() for a in grads))
    nb = torch.sqrt(sum(b.square().sum() for b in target))
    return 1.0 - dot / (na * nb).clamp_min(1e-12)


def invert_gradients(model: nn.Module, head: MarginHead, observed: dict[str, torch.Tensor],
                     labels: torch.Tensor, shape: tuple[int, ...], steps: int = 400,
                     restarts: int = 2, lr: float = 0.1, tv: float = 1e-2,
                     train: bool = True, seed: int = 0, progress: str | bool = False
                     ) -> tuple[torch.Tensor, dict]:
    """Images whose training-step gradient matches ``observed`` (``shape`` = the batch's
    (B, 3, H, W), in the model's [-1, 1] input range); returns the best restart's images
    and ``{"distance": its final matching loss, "distances": every restart's}``."""
    from binface.nn.autodiff import twice_differentiable
    from binface.progress import progress as progress_bar

    if steps < 1 or restarts < 1:
        raise BinfaceError("steps and restarts must be positive")
    named = [(n, p) for n, p in _params(model, head) if n in observed]
    params = [p for _, p in named]
    target = [observed[n] for n, _ in named]
    g = torch.Generator().manual_seed(seed)
    best, best_d, dists = None, float("inf"), []
    bar = progress_bar(total=steps * restarts, desc=progress or "invert", unit="step",
                       disable=not progress)
    try:
        for _ in range(restarts):
            x = (torch.rand(shape, generator=g) * 2 - 1).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, [int(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1)
            d = float("inf")
            for _ in range(steps):
                with twice_differentiable(), training_step(model, train):
                    loss = head(model(x), labels)
                    grads = torch.autograd.grad(loss, params, create_graph=True,
                                                allow_unused=True)
                    pairs = [(a, b) for a, b in zip(grads, target, strict=True)
                             if a is not None]
                    dist = gradient_distance([a for a, _ in pairs], [b for _, b in pairs])
                    cost = dist + tv * total_variation(x)
                    (gx,) = torch.autograd.grad(cost, x)
                x.grad = gx.sign()  # Inverting Gradients: Adam on the signed gradient
                opt.step()
                sched.step()
                with torch.no_grad():
                    x.clamp_(-1.0, 1.0)
                d = float(dist.detach())
                bar.update(1)
            dists.append(d)
            if not np.isfinite(d):
                continue
            if d < best_d:
                best, best_d = x.detach().clone(), d
    finally:
        bar.close()
    if best is None:
        raise BinfaceError("gradient inversion diverged (the matching loss is NaN) in every "
                           "restart")
    return best, {"distance": best_d, "distances": dists}
