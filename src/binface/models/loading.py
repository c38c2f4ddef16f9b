"""One way to get a model: from a zoo name, a checkpoint file, or a module.

Training, evaluation, export, the benchmarks and distillation teachers all call
:func:`load_model`, so a checkpoint is read with one rule everywhere:

- it is read with ``torch.load(weights_only=True)``: no pickled code can run;
- it is a dict holding ``"model"`` (a registered name) and ``"state_dict"``, and
  optionally ``"model_kwargs"`` (a dict of builder arguments) and ``"qat"`` (``"int8"``:
  the model was trained with fake-quant layers, rebuilt before the weights load). A
  file written by ``binface train`` also has ``"format": "binface-checkpoint"`` and
  ``"version"``; a newer version than this binface knows is refused;
- the weights must fit the rebuilt model exactly (no missing or unexpected tensor,
  no shape mismatch).

The family (``cnn`` / ``hybrid`` / ``binary``) comes from the registry; a module
that is not in the zoo is ``binary`` when any of its layers runs binary, else
``cnn`` (:func:`family_of`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from binface.errors import BinfaceError, InputShapeError, UnknownModelError
from binface.models.registry import create_model, model_info

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_SUFFIXES", "CHECKPOINT_VERSION", "LoadedModel",
           "MAX_MODEL_ELEMENTS",
           "build_model", "family_of", "load_checkpoint", "load_model", "model_from_checkpoint"]

CHECKPOINT_FORMAT = "binface-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
# the zoo's largest model (vit_s_face) holds about 22M weights: a builder asked for
# 2^28 (a 1 GiB float model) has been handed absurd arguments
MAX_MODEL_ELEMENTS = 2**28


@dataclass
class LoadedModel:
    """A model in eval mode with what the runtimes need to know about it."""

    model: nn.Module
    name: str
    input_size: tuple[int, int]
    family: str


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, printable characters only."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return "".join(ch for ch in line if ch.isprintable())[:200]


def _refusal(path: Path, exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to
    load it unsafely (which would run whatever the file holds)."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"{path} is refused: it holds objects a checkpoint never contains "
                f"({found.group(1)}); nothing in it was run")
    if "Weights only load failed" in text or isinstance(exc, (KeyError, EOFError)):
        return f"{path} is not a readable binface checkpoint (not a PyTorch file, or damaged)"
    return f"{path} is not a readable binface checkpoint ({_first_line(exc)})"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely; a missing, foreign or unsafe file is one line."""
    path = Path(path)
    if not path.is_file():
        raise BinfaceError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise BinfaceError(_refusal(path, exc)) from None
    if not isinstance(ckpt, dict):
        raise BinfaceError(f"{path} is not a binface checkpoint (not a dict)")
    if "format" in ckpt and ckpt["format"] != CHECKPOINT_FORMAT:
        raise BinfaceError(f"{path} is not a binface checkpoint (format {ckpt['format']!r})")
    if "model" not in ckpt or "state_dict" not in ckpt:
        raise BinfaceError(f"{path} is not a binface checkpoint (expected a dict with "
                           "'model', 'model_kwargs' and 'state_dict')")
    version = ckpt.get("version", CHECKPOINT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BinfaceError(f"{path}: checkpoint version {version!r} is not a positive integer")
    if version > CHECKPOINT_VERSION:
        raise BinfaceError(f"{path} has checkpoint version {version}; this binface reads up "
                           f"to version {CHECKPOINT_VERSION}: upgrade binface")
    return ckpt


def build_model(name: object, kwargs: object = None, where: str = "") -> nn.Module:
    """``create_model(name, **kwargs)`` with builder errors as one line naming ``where``."""
    prefix = f"{where}: " if where else ""
    if not isinstance(name, str):
        raise BinfaceError(f"{prefix}model name must be a string, not {type(name).__name__}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise BinfaceError(f"{prefix}model_kwargs must be a dict of names to values")
    try:
        if kwargs:  # a zoo model at its defaults is known to be small: no second build
            _check_size(name, kwargs, prefix)
        return create_model(name, **kwargs)
    except UnknownModelError as exc:
        raise UnknownModelError(f"{prefix}{exc}") from None
    except BinfaceError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as exc:
        raise BinfaceError(f"{prefix}cannot build {name!r} with {kwargs}: "
                           f"{_first_line(exc)}") from None


def _check_size(name: str, kwargs: dict, prefix: str) -> None:
    """Refuse arguments that would build an absurdly large model, before allocating it.

    The model is first built on PyTorch's "meta" device, where tensors have shapes but
    no storage. A builder that cannot run there (it copies data at init) is not checked.
    """
    try:
        with torch.device("meta"):
            shadow = create_model(name, **kwargs)
    except Exception:  # noqa: BLE001 - the real build below reports argument errors
        return
    elements = sum(t.numel() for t in (*shadow.parameters(), *shadow.buffers()))
    if elements > MAX_MODEL_ELEMENTS:
        raise BinfaceError(f"{prefix}{name!r} with {kwargs} would hold {elements:,} weights "
                           f"(limit {MAX_MODEL_ELEMENTS:,}); check model_kwargs")


def model_from_checkpoint(ckpt: dict | str | os.PathLike, where: str = "") -> nn.Module:
    """Rebuild a checkpoint's registered model and load its weights strictly (eval mode)."""
    if not isinstance(ckpt, dict):
        where = where or str(ckpt)
        ckpt = load_checkpoint(ckpt)
    where = where or "checkpoint"
    model = build_model(ckpt["model"], ckpt.get("model_kwargs"), where)
    qat = ckpt.get("qat", "none")
    if qat is not None and not (isinstance(qat, str) and qat == "none"):
        # the fake-quant layers first: their scales are in the state dict
        from binface.nn.qat import QAT_MODES, prepare_qat

        if not isinstance(qat, str) or qat not in QAT_MODES:
            raise BinfaceError(f"{where}: unknown quantisation-aware training mode "
                               f"{repr(qat)[:40]} (this binface knows {', '.join(QAT_MODES)})")
        prepare_qat(model, qat)
    state = ckpt["state_dict"]
    if not isinstance(state, dict):
        raise BinfaceError(f"{where}: 'state_dict' is not a dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, KeyError) as exc:
        missing = set(model.state_dict()) - set(state)
        unexpected = set(state) - set(model.state_dict())
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected tensors"
                  if missing or unexpected else _first_line(exc))
        raise BinfaceError(f"{where}: the weights do not fit model {ckpt['model']!r} "
                           f"({detail})") from None
    return model.eval()


def family_of(model: nn.Module, name: str | None = None) -> str:
    """The zoo family of ``name``; for a module outside the zoo, judged from its layers."""
    if name is not None:
        try:
            return model_info(name).family
        except UnknownModelError:
            pass
    fam = getattr(model, "family", None)
    if isinstance(fam, str):
        return fam
    return "binary" if any(getattr(m, "runtime_binary", False) for m in model.modules()) \
        else "cnn"


def is_checkpoint_path(spec: str | os.PathLike) -> bool:
    """A path that names a checkpoint: a known suffix, or an existing file."""
    return Path(spec).suffix in CHECKPOINT_SUFFIXES or Path(spec).is_file()


def load_model(spec: str | os.PathLike | nn.Module, input_size: tuple[int, int] | None = None
               ) -> LoadedModel:
    """A zoo name (random init), a checkpoint path, or a module, in eval mode.

    ``input_size`` is checked against a model that only takes one size.
    """
    if isinstance(spec, nn.Module):
        name = getattr(spec, "model_name", type(spec).__name__)
        model = spec
    elif is_checkpoint_path(spec):
        ckpt = load_checkpoint(spec)
        name = str(ckpt["model"])
        model = model_from_checkpoint(ckpt, where=str(spec))
    else:
        name = str(spec)
        model = build_model(name)
    fixed = getattr(model, "input_size", None)
    if input_size and fixed and tuple(input_size) != tuple(fixed):
        raise InputShapeError(f"{name} takes {fixed[0]}x{fixed[1]} images only, not "
                              f"{input_size[0]}x{input_size[1]}")
    size = input_size or fixed or (112, 112)
    return LoadedModel(model.eval(), name, tuple(size), family_of(model, name))
