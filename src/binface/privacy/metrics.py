"""Image similarity and confidence intervals, from the libraries that do them well:
PSNR and SSIM from scikit-image, Clopper-Pearson and bootstrap intervals from SciPy
(both in the ``privacy`` extra)."""

from __future__ import annotations

import importlib

import numpy as np

from binface.errors import BinfaceError

HINT = "pip install 'binface[privacy]' (scikit-image, SciPy)"


def need(module: str):
    """Import ``module`` or fail in one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BinfaceError(f"binface privacy needs {module.split('.')[0]}: {HINT}") from None


def _hwc(x: np.ndarray) -> np.ndarray:
    """A (3, H, W) image in [-1, 1] as (H, W, 3) float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] != 3:
        raise BinfaceError(f"an image must be (3, H, W), got {x.shape}")
    return x.transpose(1, 2, 0)


def psnr(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two (3, H, W) images in [-1, 1]."""
    metrics = need("skimage.metrics")
    return float(metrics.peak_signal_noise_ratio(_hwc(original), _hwc(reconstruction),
                                                 data_range=2.0))


def ssim(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Structural similarity of two (3, H, W) images in [-1, 1] (colour, 7x7 windows)."""
    metrics = need("skimage.metrics")
    return float(metrics.structural_similarity(_hwc(original), _hwc(reconstruction),
                                               data_range=2.0, channel_axis=-1))


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95
                    ) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a rate."""
    stats = need("scipy.stats")
    if trials < 1 or not 0 <= successes <= trials:
        raise BinfaceError(f"a rate needs 0 <= successes <= trials, trials >= 1: got "
                           f"{successes} of {trials}")
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def bootstrap_ci(values, confidence: float = 0.95, seed: int = 0,
                 statistic=np.mean) -> tuple[float, float]:
    """A percentile-bootstrap interval of ``statistic`` over ``values`` (SciPy)."""
    stats = need("scipy.stats")
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise BinfaceError("an interval needs finite values")
    if v.size == 1 or np.all(v == v[0]):
        return float(statistic(v)), float(statistic(v))
    res = stats.bootstrap((v,), statistic, confidence_level=confidence, method="percentile",
                          random_state=np.random.default_rng(seed), n_resamples=2000)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summary(values, confidence: float = 0.95) -> dict:
    """Mean and its bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_ci(v, confidence)
    return {"mean": float(v.mean()), "ci95": [lo, hi], "n": int(v.size)}


def rate(successes: int, trials: int) -> dict:
    """A rate and its Clopper-Pearson interval."""
    lo, hi = clopper_pearson(successes, trials)
    return {"rate": successes / trials, "ci95": [lo, hi], "successes": int(successes),
            "n": int(trials)}
