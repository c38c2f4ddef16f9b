"""A gallery of enrolled identities and nearest-identity search.

An identity's template is the mean of its photos' unit embeddings, renormalised: on the
unit sphere that is the direction closest (in summed cosine) to all of them, so one
bad photo moves it less than it would move a single-photo template. Search is cosine
against every template; the best below the threshold is reported as ``unknown``.

A gallery file (``.npz``, read with ``allow_pickle=False``) records which model made
its embeddings and their size, because cosines between two models' embeddings mean
nothing: :func:`check_compatible` refuses a mismatch in one line.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from binface.errors import BinfaceError

__all__ = ["GALLERY_FORMAT", "Gallery", "check_compatible", "identify", "load_gallery",
           "mean_template"]

GALLERY_FORMAT = "binface-gallery"
GALLERY_VERSION = 1
UNKNOWN = "unknown"


def mean_template(embeddings: np.ndarray) -> np.ndarray:
    """The renormalised mean of the rows of ``embeddings``, each first normalised."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or len(e) == 0:
        raise BinfaceError(f"a template needs at least one embedding, got shape {e.shape}")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    m = e.mean(0)
    norm = np.linalg.norm(m)
    if norm < 1e-9:
        raise BinfaceError("the embeddings cancel out: their mean is zero")
    return m / norm


@dataclass
class Gallery:
    """Enrolled identities: ``names`` (K), unit ``templates`` (K, D), photos per identity
    (``counts``), the model's identity (``model``: name, spec, sha256, embedding_size) and
    an optional decision ``threshold`` (cosine) chosen at enrolment."""

    names: list[str]
    templates: np.ndarray
    counts: np.ndarray
    model: dict
    threshold: float | None = None
    threshold_info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.templates = np.asarray(self.templates, dtype=np.float32)
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if self.templates.ndim != 2 or len(self.names) != len(self.templates) or \
                len(self.counts) != len(self.names):
            raise BinfaceError(f"a gallery needs one template and count per name: "
                               f"{len(self.names)} names, templates {self.templates.shape}, "
                               f"{len(self.counts)} counts")

    @property
    def embedding_size(self) -> int:
        return int(self.templates.shape[1])

    def save(self, path: str | os.PathLike) -> None:
        """Write the gallery atomically as ``.npz`` (no pickled objects)."""
        from binface.fileio import write_bytes

        meta = {"format": GALLERY_FORMAT, "version": GALLERY_VERSION, "model": self.model,
                "threshold": self.threshold, "threshold_info": self.threshold_info}
        buf = io.BytesIO()
        np.savez(buf, names=np.array(self.names, dtype=str), templates=self.templates,
                 counts=self.counts, meta=np.array(json.dumps(meta)))
        write_bytes(path, buf.getvalue())


def load_gallery(path: str | os.PathLike) -> Gallery:
    """Read a gallery written by :meth:`Gallery.save`; anything else is one line."""
    path = Path(path)
    if not path.is_file():
        raise BinfaceError(f"{path}: gallery not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            templates, counts = np.array(z["templates"]), np.array(z["counts"])
            meta = json.loads(str(z["meta"]))
    except Exception as exc:  # noqa: BLE001 - numpy, zipfile and json raise many types
        raise BinfaceError(f"{path}: not a binface gallery (.npz from binface enroll): "
                           f"{type(exc).__name__}") from None
    if not isinstance(meta, dict) or meta.get("format") != GALLERY_FORMAT:
        raise BinfaceError(f"{path}: not a binface gallery (no {GALLERY_FORMAT} record)")
    if not isinstance(meta.get("version"), int) or meta["version"] > GALLERY_VERSION:
        raise BinfaceError(f"{path}: gallery version {meta.get('version')!r}; this binface "
                           f"reads up to version {GALLERY_VERSION}")
    if templates.ndim != 2 or templates.dtype.kind != "f" or not np.isfinite(templates).all():
        raise BinfaceError(f"{path}: the gallery's templates are not a finite (K, D) array")
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    thr = meta.get("threshold")
    g = Gallery(names, templates, counts, model,
                float(thr) if isinstance(thr, (int, float)) else None,
                meta.get("threshold_info") or {})
    size = model.get("embedding_size")
    if size is not None and size != g.embedding_size:
        raise BinfaceError(f"{path}: records {size}-D embeddings but holds "
                           f"{g.embedding_size}-D templates")
    return g


def check_compatible(gallery: Gallery, model: dict, where: str = "gallery") -> None:
    """Refuse to search a gallery with embeddings of another model (size or name)."""
    size = model.get("embedding_size")
    if size is not None and size != gallery.embedding_size:
        raise BinfaceError(f"{where} holds {gallery.embedding_size}-D embeddings of model "
                           f"{gallery.model.get('model', '?')}, but model {model.get('model')} "
                           f"gives {size}-D ones: enroll again with this model")
    if gallery.model.get("model") and model.get("model") and \
            gallery.model["model"] != model["model"]:
        raise BinfaceError(f"{where} was enrolled with model {gallery.model['model']}, not "
                           f"{model['model']}: cosines across models mean nothing; enroll "
                           "again with this model")


def identify(embeddings: np.ndarray, gallery: Gallery, top_k: int = 1,
             threshold: float | None = None) -> list[dict]:
    """For each unit embedding (N, D): the ``top_k`` nearest identities with their cosines,
    and the decision: the nearest name if its cosine is above ``threshold`` (the rule of
    :func:`binface.eval.threshold_at_far`), else ``unknown``; with no threshold, the
    nearest name, undecided."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != gallery.embedding_size:
        raise BinfaceError(f"embeddings of shape {e.shape} do not fit the gallery's "
                           f"{gallery.embedding_size}-D templates")
    if top_k < 1:
        raise BinfaceError(f"top-k must be at least 1, got {top_k}")
    if len(gallery.names) == 0:
        raise BinfaceError("the gallery is empty")
    cos = e @ gallery.templates.T.astype(np.float64)
    out = []
    for row in cos:
        order = np.argsort(-row, kind="stable")[:top_k]
        matches = [{"name": gallery.names[i], "cosine": float(row[i])} for i in order]
        best = matches[0]
        known = threshold is None or best["cosine"] > threshold
        out.append({"identity": best["name"] if known else UNKNOWN,
                    "cosine": best["cosine"], "matches": matches,
                    "decided": threshold is not None})
    return out
