"""Training configuration: defaults, then an experiment file, then ``key=value`` overrides.

The defaults below are the base config (``binface train --print-config`` shows it).
An experiment file is YAML with the same nesting and may name another file as
``base:`` (relative to itself), which it then updates. Overrides on the command
line use dotted keys (``optim.lr=0.01``) and YAML values (``data.val=[a.bin,b.bin]``).
Unknown keys and values of the wrong type or range are one-line errors.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from binface.errors import BinfaceError

DEFAULTS: dict[str, Any] = {
    "model": "mobilefacenet",  # a name from `binface models`
    "model_kwargs": {},  # extra arguments for create_model (e.g. embedding_size)
    "data": {
        "train": None,  # a .rec file (with .idx beside it) or a folder of identity folders
        "val": [],  # verification packs (.bin) checked during training
        "val_pairs": None,  # score only this many pairs per pack (10-fold layout kept)
        "workers": 0,  # DataLoader worker processes
        "skip_bad": False,  # skip unreadable training records with a warning
    },
    "head": {
        "margin": "arcface",  # arcface | cosface | combined | adaface
        "s": 64.0,
        "m": None,  # the margin of arcface/cosface/adaface (None: 0.5 / 0.4 / 0.4)
        "m1": 1.0,  # combined margin cos(m1 theta + m2) - m3
        "m2": 0.5,
        "m3": 0.0,
        "sample_rate": 1.0,  # Partial FC: fraction of negative class centres per step
    },
    "optim": {
        "name": "auto",  # sgd | adamw | adam | auto (adam for binary networks, else sgd)
        "lr": "auto",  # auto: sgd 0.1 x global batch / 1024, adam(w) 1e-3
        "momentum": 0.9,
        "weight_decay": 5.0e-4,
        "betas": [0.9, 0.999],
    },
    "schedule": {
        "name": "polynomial",  # polynomial | cosine | constant
        "power": 1.0,
        "warmup_epochs": 0.0,
        "min_lr": 0.0,
    },
    "train": {
        "epochs": 20,  # may be fractional (0.5: half an epoch)
        "batch_size": 128,  # per process
        "grad_clip": 5.0,  # max gradient norm (0: off)
        "amp": "none",  # none | bf16 | fp16 (fp16 on CUDA only)
        "grad_accum": 1,
        "seed": 0,
        "two_stage": False,  # binary: real weights + binary activations first, then both
        "stage1_fraction": 0.5,  # fraction of the steps in stage one
        "max_steps": None,  # stop after this many optimiser steps
        "log_every": 10,  # steps between log lines
        "val_every": None,  # steps between verifications (None: at each epoch end)
        "checkpoint_every": None,  # steps between "last" checkpoints (None: each epoch end)
        "channels_last": False,
        "device": "auto",  # auto | cpu | cuda
    },
    "output": "runs/experiment",
    "teacher": None,  # a binface checkpoint (any family) to distil from
    "distill": {
        # each loss: a weight, or {weight: w, schedule: constant|linear_decay|linear_warmup}
        "cosine": 0.0,  # 1 - cos(student, teacher) embedding
        "l2": 0.0,  # MSE between embeddings
        "margin": 0.0,  # MarginDistillation: towards the teacher's angles to its centres
        "logit_kd": 0.0,  # KL of softened logits over the teacher's class centres
        "temperature": 4.0,
        "margin_m": 0.5,  # largest class margin of MarginDistillation
    },
}

CHOICES = {
    "head.margin": ("arcface", "cosface", "combined", "adaface"),
    "optim.name": ("auto", "sgd", "adamw", "adam"),
    "schedule.name": ("polynomial", "cosine", "constant"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
}
SCHEDULES = ("constant", "linear_decay", "linear_warmup")
DISTILL_LOSSES = ("cosine", "l2", "margin", "logit_kd")


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("model_kwargs",):
            yield from _walk(v, key + ".")
        else:
            yield key, v


ALL_KEYS = {k for k, _ in _walk(DEFAULTS)}
SECTIONS = {k for k, v in DEFAULTS.items() if isinstance(v, dict)}


def _unknown(key: str, where: str) -> BinfaceError:
    close = difflib.get_close_matches(key, sorted(ALL_KEYS | SECTIONS), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return BinfaceError(f"unknown config key {key!r} in {where}{hint}")


def _merge(base: dict, update: dict, where: str, prefix: str = "") -> None:
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in base:
            raise _unknown(key, where)
        if isinstance(base[k], dict) and key != "model_kwargs":
            if not isinstance(v, dict):
                raise BinfaceError(f"config key {key!r} in {where} must be a mapping, got {v!r}")
            _merge(base[k], v, where, key + ".")
        else:
            base[k] = copy.deepcopy(v)


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML experiment file, with its ``base:`` chain applied first."""
    if not path.is_file():
        raise BinfaceError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise BinfaceError(f"config file {path} includes itself through 'base:'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise BinfaceError(f"config file {path} is not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise BinfaceError(f"config file {path} must hold a mapping of keys, got "
                           f"{type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _load_yaml((path.parent / str(base)), seen + (path.resolve(),))
    merged = copy.deepcopy(DEFAULTS)
    _merge(merged, parent, str(path.parent / str(base)))
    _merge(merged, data, str(path))
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", YAML-parsed value)."""
    if "=" not in text:
        raise BinfaceError(f"override {text!r} must look like key=value (e.g. optim.lr=0.01)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _set(cfg: dict, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        sub = ".".join(parts[: i + 1])
        if sub == "model_kwargs":
            node = node.setdefault("model_kwargs", {})
            continue
        if p not in node or not isinstance(node[p], dict):
            raise _unknown(key, where)
        node = node[p]
    last = parts[-1]
    if not key.startswith("model_kwargs.") and last not in node:
        raise _unknown(key, where)
    node[last] = value


def _type_error(key: str, value: Any, want: str) -> BinfaceError:
    return BinfaceError(f"config value {key}={value!r} is invalid: expected {want}")


def _coerce_floats(cfg: dict) -> None:
    """Read '5e-4' as 5e-4: PyYAML (YAML 1.1) leaves exponents without a dot as strings."""
    for key, default in _walk(DEFAULTS):
        if isinstance(default, float) or key in ("optim.lr", "head.m"):
            *path, last = key.split(".")
            node = cfg
            for p in path:
                node = node[p]
            value = node[last]
            if isinstance(value, str) and value != "auto":
                with contextlib.suppress(ValueError):  # else validate() reports the type
                    node[last] = float(value)


def validate(cfg: dict) -> dict:
    """Check types and ranges of every known key; returns ``cfg``."""
    _coerce_floats(cfg)
    flat = dict(_walk(cfg))
    for key, choices in CHOICES.items():
        if flat[key] not in choices:
            raise _type_error(key, flat[key], "one of " + ", ".join(choices))

    def positive_int(key: str, allow_none: bool = False) -> None:
        v = flat[key]
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise _type_error(key, v, "a positive integer" + (" or null" if allow_none else ""))

    def number(key: str, lo: float | None = None, hi: float | None = None,
               allow_none: bool = False) -> None:
        v = flat[key]
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _type_error(key, v, "a number")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise _type_error(key, v, "a number " + rng)

    for key in ("train.batch_size", "train.grad_accum", "train.log_every"):
        positive_int(key)
    number("train.epochs", 1e-9)
    for key in ("train.max_steps", "train.val_every", "train.checkpoint_every", "data.val_pairs"):
        positive_int(key, allow_none=True)
    if isinstance(flat["data.workers"], bool) or not isinstance(flat["data.workers"], int) or \
            flat["data.workers"] < 0:
        raise _type_error("data.workers", flat["data.workers"], "an integer >= 0")
    number("head.s", 0.0)
    number("head.m", 0.0, 2.0, allow_none=True)
    for k in ("head.m1", "head.m2", "head.m3"):
        number(k)
    number("head.sample_rate", 1e-6, 1.0)
    if flat["optim.lr"] != "auto":
        number("optim.lr", 0.0)
    number("optim.momentum", 0.0, 1.0)
    number("optim.weight_decay", 0.0)
    number("schedule.power", 0.0)
    number("schedule.warmup_epochs", 0.0)
    number("schedule.min_lr", 0.0)
    number("train.grad_clip", 0.0)
    number("train.stage1_fraction", 0.0, 1.0)
    number("distill.temperature", 1e-6)
    number("distill.margin_m", 0.0, 2.0)
    if not isinstance(flat["train.seed"], int) or isinstance(flat["train.seed"], bool):
        raise _type_error("train.seed", flat["train.seed"], "an integer")
    betas = flat["optim.betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and
            all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise _type_error("optim.betas", betas, "two numbers in [0, 1)")
    if not isinstance(cfg["model"], str):
        raise _type_error("model", cfg["model"], "a model name")
    if not isinstance(cfg["model_kwargs"], dict):
        raise _type_error("model_kwargs", cfg["model_kwargs"], "a mapping")
    val = cfg["data"]["val"]
    if isinstance(val, str):
        cfg["data"]["val"] = val = [val]
    if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
        raise _type_error("data.val", val, "a list of .bin paths")
    for name in DISTILL_LOSSES:
        spec = cfg["distill"][name]
        weight, sched = distill_spec(spec, name)
        if weight < 0:
            raise _type_error(f"distill.{name}", spec, "a weight >= 0")
        if sched not in SCHEDULES:
            raise _type_error(f"distill.{name}.schedule", sched, "one of " + ", ".join(SCHEDULES))
    if cfg["train"]["amp"] == "fp16" and cfg["train"]["device"] == "cpu":
        raise _type_error("train.amp", "fp16", "bf16 or none on CPU (fp16 needs CUDA)")
    return cfg


def distill_spec(spec: Any, name: str) -> tuple[float, str]:
    """(weight, schedule) of one distillation loss from a number or a mapping."""
    if isinstance(spec, bool):
        raise _type_error(f"distill.{name}", spec, "a weight or {weight, schedule}")
    if isinstance(spec, (int, float)):
        return float(spec), "constant"
    if isinstance(spec, dict) and set(spec) <= {"weight", "schedule"}:
        w = spec.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise _type_error(f"distill.{name}.weight", w, "a number")
        return float(w), str(spec.get("schedule", "constant"))
    raise _type_error(f"distill.{name}", spec, "a weight or {weight, schedule}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> dict:
    """Defaults, updated by the experiment file at ``path`` and the ``key=value`` overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        _merge(cfg, _load_yaml(Path(path)), str(path))
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, "the command line")
    return validate(cfg)


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
