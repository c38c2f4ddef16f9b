"""Template inversion: a face rebuilt from a stored embedding (white-box optimisation).

The attacker holds the model and one enrolled template ``t``; it optimises an image
``x`` so that ``cos(f(x), t)`` is high, with a total-variation prior, Adam and restarts.
Success is judged as a face verification system would: the attacked model's own
threshold at FMR = 0.1% (from the impostor pairs of a pack), and, transferred, an
independent evaluator model's threshold on (reconstruction, original image).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from binface.errors import BinfaceError
from binface.privacy.gradient import total_variation

FMR = 1e-3


def embed(model: nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Unit embeddings of normalised (N, 3, H, W) images, eval mode, no flip."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [F.normalize(model(x[i:i + batch]).reshape(len(x[i:i + batch]), -1))
                   for i in range(0, len(x), batch)]
    finally:
        model.train(was)
    return torch.cat(out)


def threshold_at_fmr(model: nn.Module, pair_images: np.ndarray, issame: np.ndarray,
                     fmr: float = FMR) -> dict:
    """The cosine threshold above which a share ``fmr`` of the pack's impostor pairs fall."""
    from binface.privacy.faces import to_tensor

    issame = np.asarray(issame, dtype=bool)
    imp = np.flatnonzero(~issame)
    if len(imp) < 1 / fmr:
        raise BinfaceError(f"{len(imp)} impostor pairs cannot set a threshold at FMR "
                           f"{fmr:g} (need at least {int(1 / fmr)})")
    idx = np.stack([2 * imp, 2 * imp + 1], 1).reshape(-1)
    e = embed(model, to_tensor(pair_images[idx])).numpy()
    sims = (e[0::2] * e[1::2]).sum(1)
    thr = float(np.quantile(sims, 1.0 - fmr, method="higher"))
    return {"threshold": thr, "fmr": fmr, "impostor_pairs": int(len(imp))}


def invert_template(model: nn.Module, templates: torch.Tensor, shape: tuple[int, ...],
                    steps: int = 400, restarts: int = 2, lr: float = 0.05, tv: float = 1e-2,
                    seed: int = 0, progress: str | bool = False) -> tuple[torch.Tensor, dict]:
    """Images (``shape`` = (N, 3, H, W)) whose embeddings match ``templates`` (N, D) in
    cosine; per image, the best of ``restarts``. Returns them and their final cosines."""
    from binface.progress import progress as progress_bar

    if templates.dim() != 2 or templates.shape[0] != shape[0]:
        raise BinfaceError(f"{shape[0]} images for templates of shape "
                           f"{tuple(templates.shape)}")
    with torch.no_grad():
        dim = model.eval()(torch.zeros(1, *shape[1:])).reshape(1, -1).shape[1]
    if templates.shape[1] != dim:
        raise BinfaceError(f"templates of size {templates.shape[1]} do not fit this model's "
                           f"{dim}-D embeddings")
    t = F.normalize(templates.detach().float())
    g = torch.Generator().manual_seed(seed)
    best = torch.zeros(shape)
    best_cos = torch.full((shape[0],), -2.0)
    model.eval()
    bar = progress_bar(total=steps * restarts, desc=progress or "invert", unit="step",
                       disable=not progress)
    try:
        for _ in range(restarts):
            x = (torch.rand(shape, generator=g) * 0.2 - 0.1).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            for _ in range(steps):
                cos = (F.normalize(model(x).reshape(shape[0], -1)) * t).sum(1)
                cost = (1.0 - cos).sum() + tv * shape[0] * total_variation(x)
                opt.zero_grad(set_to_none=True)
                cost.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(-1.0, 1.0)
                bar.update(1)
            with torch.no_grad():
                cos = (embed(model, x.detach()) * t).sum(1)
                better = cos > best_cos
                best[better] = x.detach()[better]
                best_cos[better] = cos[better]
    finally:
        bar.close()
    return best, {"cosine": best_cos.tolist()}
