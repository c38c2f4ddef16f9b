"""Training configuration: one schema, then an experiment file, then ``key=value`` overrides.

:data:`SCHEMA` declares every key once: its default, its type (with choices or a
range) and a line of help. The defaults (:data:`DEFAULTS`, ``binface train
--print-config``), the validation and the key table (``binface train --list-keys``)
are all derived from it; choices that mirror a registry (models, margins,
optimisers, schedules) are read from that registry. See docs/training.md.

An experiment file is YAML with the same nesting and may name another file as
``base:`` (relative to itself), which it then updates. Overrides on the command
line use dotted keys (``optim.lr=0.01``) and YAML values (``data.val=[a.bin,b.bin]``).
Unknown keys and values of the wrong type or range are one-line errors.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from binface.errors import BinfaceError
from binface.nn.margin import MARGINS
from binface.nn.qat import QAT_MODES
from binface.train.optim import LR_SCHEDULES, OPTIMIZERS, WEIGHT_SCHEDULES


def _bad(key: str, value: Any, want: str) -> BinfaceError:
    return BinfaceError(f"config value {key}={value!r} is invalid: expected {want}")


# ---------------------------------------------------------------- value types
class Type:
    """A kind of value: ``check`` returns it (normalised) or raises ValueError.

    :class:`Key` turns the ValueError into the one-line error naming the key.
    """

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, key: str, value: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Type):
    lo: int | None = None
    hi: int | None = None

    def describe(self) -> str:
        if self.hi is not None:
            return f"an integer in [{self.lo}, {self.hi}]"
        return {None: "an integer", 0: "an integer >= 0", 1: "a positive integer"}.get(
            self.lo, f"an integer >= {self.lo}")

    def check(self, key: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or \
                (self.lo is not None and value < self.lo) or \
                (self.hi is not None and value > self.hi):
            raise ValueError
        return value


@dataclass(frozen=True)
class Number(Type):
    """A finite number in a range; '5e-4' is read as 5e-4 (YAML 1.1 leaves it a string)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded

    def describe(self) -> str:
        if self.lo is None and self.hi is None:
            return "a number"
        if self.hi is None:
            return f"a number {'>' if self.lo_open else '>='} {self.lo:g}"
        return f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"

    def check(self, key: str, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError from None  # no number: Key names what it expects
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise ValueError
        low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        if low or (self.hi is not None and value > self.hi):
            raise ValueError
        return value


@dataclass(frozen=True)
class Bool(Type):
    def describe(self) -> str:
        return "true or false"

    def check(self, key: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError
        return value


@dataclass(frozen=True)
class Text(Type):
    """A string such as a path (a number is taken as its text: ``output=2024``)."""

    what: str = "a string"

    def describe(self) -> str:
        return self.what

    def check(self, key: str, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ValueError
        return value


@dataclass(frozen=True)
class OneOf(Type):
    """One of fixed names, or of a registry's names (``choices`` a callable, read late)."""

    choices: Sequence[str] | Callable[[], Sequence[str]]
    what: str | None = None  # describes a long list instead of spelling it out

    def names(self) -> list[str]:
        return list(self.choices() if callable(self.choices) else self.choices)

    def describe(self) -> str:
        return self.what or "one of " + ", ".join(self.names())

    def check(self, key: str, value: Any) -> Any:
        names = self.names()
        if not isinstance(value, str) or value not in names:
            close = difflib.get_close_matches(str(value), names, n=3, cutoff=0.6)
            raise ValueError(f"did you mean {', '.join(close)}?" if close and self.what else "")
        return value


@dataclass(frozen=True)
class Paths(Type):
    """A list of paths; one path alone is read as a list of one."""

    def describe(self) -> str:
        return "a list of .bin paths"

    def check(self, key: str, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError
        return value


@dataclass(frozen=True)
class StagePairs(Type):
    """(teacher module, student module) name pairs: ``[[t, s], ...]`` or ``["t:s", ...]``."""

    def describe(self) -> str:
        return "a list of [teacher_stage, student_stage] module-name pairs (or 't:s' strings)"

    def check(self, key: str, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError
        out = []
        for item in items:
            if isinstance(item, str) and item.count(":") == 1:
                item = item.split(":")
            if not (isinstance(item, (list, tuple)) and len(item) == 2
                    and all(isinstance(n, str) and n.strip() for n in item)):
                raise ValueError
            out.append([item[0].strip(), item[1].strip()])
        return out


@dataclass(frozen=True)
class Mapping(Type):
    """Free-form keyword arguments; ``key.name=value`` overrides set one of them."""

    def describe(self) -> str:
        return "a mapping"

    def check(self, key: str, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError
        return value


@dataclass(frozen=True)
class Betas(Type):
    def describe(self) -> str:
        return "two numbers in [0, 1)"

    def check(self, key: str, value: Any) -> Any:
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and
                all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                    for b in value)):
            raise ValueError
        return value


@dataclass(frozen=True)
class LossWeight(Type):
    """A distillation loss: a weight, or ``{weight: w, schedule: name}``."""

    def describe(self) -> str:
        return "a weight >= 0, or {weight, schedule: " + "|".join(WEIGHT_SCHEDULES) + "}"

    def check(self, key: str, value: Any) -> Any:
        weight, schedule = distill_spec(value, key)
        if weight < 0:
            raise _bad(key, value, "a weight >= 0")
        if schedule not in WEIGHT_SCHEDULES:
            raise _bad(f"{key}.schedule", schedule, "one of " + ", ".join(WEIGHT_SCHEDULES))
        return value


def distill_spec(spec: Any, key: str) -> tuple[float, str]:
    """(weight, schedule) of one distillation loss (``key`` e.g. distill.cosine)."""
    if not key.startswith("distill."):
        key = f"distill.{key}"
    if isinstance(spec, bool):
        raise _bad(key, spec, "a weight or {weight, schedule}")
    if isinstance(spec, (int, float)):
        return float(spec), "constant"
    if isinstance(spec, dict) and set(spec) <= {"weight", "schedule"}:
        w = spec.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise _bad(f"{key}.weight", w, "a number")
        return float(w), str(spec.get("schedule", "constant"))
    raise _bad(key, spec, "a weight or {weight, schedule}")


# ---------------------------------------------------------------- the schema
@dataclass(frozen=True)
class Key:
    """One config key: default, type, one line of help; ``null``/``auto`` also accepted."""

    default: Any
    type: Type
    help: str
    null: bool = False  # null (None) is a valid value
    auto: bool = False  # the string "auto" is a valid value

    def describe(self) -> str:
        text = self.type.describe()
        if self.auto:
            text = f"'auto' or {text}"
        return f"{text} or null" if self.null else text

    def check(self, key: str, value: Any) -> Any:
        if (value is None and self.null) or (value == "auto" and self.auto):
            return value
        try:
            return self.type.check(key, value)
        except ValueError as exc:
            hint = f" ({exc})" if str(exc) else ""
            raise _bad(key, value, self.describe() + hint) from None


def _models() -> list[str]:
    from binface.models import list_models

    return list_models()


POSITIVE = Int(1)
NONNEG = Number(0.0)
FRACTION = Number(0.0, 1.0)

SCHEMA: dict[str, Key] = {
    "model": Key("mobilefacenet", OneOf(_models, "a model name from `binface models`"),
                 "the network to train, by registry name"),
    "model_kwargs": Key({}, Mapping(), "extra builder arguments (e.g. embedding_size)"),
    "data.train": Key(None, Text("a .rec file or an image folder"),
                      "a .rec file (with .idx beside it) or a folder of identity folders",
                      null=True),
    "data.val": Key([], Paths(), "verification packs (.bin) checked during training"),
    "data.val_pairs": Key(None, POSITIVE, "score only this many pairs per pack (10-fold "
                          "layout kept)", null=True),
    "data.workers": Key(0, Int(0), "DataLoader worker processes"),
    "data.skip_bad": Key(False, Bool(), "skip unreadable training records with a warning"),
    "head.margin": Key("arcface", OneOf(lambda: list(MARGINS)), "the margin of the softmax head"),
    "head.s": Key(64.0, NONNEG, "the logit scale s"),
    "head.m": Key(None, Number(0.0, 2.0), "the margin of arcface/cosface/adaface (null: 0.5 "
                  "/ 0.4 / 0.4)", null=True),
    "head.m1": Key(1.0, Number(), "combined margin cos(m1 theta + m2) - m3: m1"),
    "head.m2": Key(0.5, Number(), "combined margin: m2"),
    "head.m3": Key(0.0, Number(), "combined margin: m3"),
    "head.sample_rate": Key(1.0, Number(1e-6, 1.0), "Partial FC: fraction of negative class "
                            "centres per step"),
    "optim.name": Key("auto", OneOf(lambda: ["auto", *OPTIMIZERS]),
                      "the optimiser (auto: adam for binary networks, else sgd)"),
    "optim.lr": Key("auto", NONNEG, "learning rate (auto: sgd 0.1 x images per step / 1024, "
                    "adam(w) 1e-3)", auto=True),
    "optim.momentum": Key(0.9, FRACTION, "SGD momentum"),
    "optim.weight_decay": Key(5.0e-4, NONNEG, "weight decay"),
    "optim.betas": Key([0.9, 0.999], Betas(), "Adam(W) betas"),
    "schedule.name": Key("polynomial", OneOf(lambda: list(LR_SCHEDULES)),
                         "learning-rate schedule after the warm-up (per step)"),
    "schedule.power": Key(1.0, NONNEG, "power of the polynomial decay"),
    "schedule.warmup_epochs": Key(0.0, NONNEG, "linear warm-up length in epochs"),
    "schedule.min_lr": Key(0.0, NONNEG, "learning rate at the end of the schedule"),
    "train.epochs": Key(20, Number(0.0, lo_open=True), "epochs; may be fractional (0.5: half "
                        "an epoch)"),
    "train.batch_size": Key(128, POSITIVE, "images per micro-batch, per process"),
    "train.grad_clip": Key(5.0, NONNEG, "max gradient norm (0: off)"),
    "train.amp": Key("none", OneOf(("none", "bf16", "fp16")),
                     "autocast precision (fp16 on CUDA only)"),
    "train.grad_accum": Key(1, POSITIVE, "micro-batches per optimiser step"),
    "train.seed": Key(0, Int(0, 2**63 - 1), "seed of the weights, the data order and the flips"),
    "train.two_stage": Key(False, Bool(), "binary: real weights + binary activations first, "
                           "then both binary"),
    "train.stage1_fraction": Key(0.5, FRACTION, "fraction of the steps in stage one"),
    "train.max_steps": Key(None, POSITIVE, "stop after this many optimiser steps", null=True),
    "train.log_every": Key(10, POSITIVE, "steps between log lines"),
    "train.val_every": Key(None, POSITIVE, "steps between verifications (null: each epoch "
                           "end)", null=True),
    "train.checkpoint_every": Key(None, POSITIVE, "steps between 'last' checkpoints (null: "
                                  "each epoch end)", null=True),
    "train.qat": Key("none", OneOf(QAT_MODES), "quantisation-aware training: int8 "
                     "fake-quantises the float conv/dense weights and inputs (docs/int8.md)"),
    "train.channels_last": Key(False, Bool(), "channels-last memory format"),
    "train.init": Key(None, Text("a checkpoint path"), "start from this checkpoint's weights "
                      "(fine-tuning, e.g. QAT of a trained float model): same model; class "
                      "centres too when the classes match; step, optimiser and schedule start "
                      "afresh (not --resume)", null=True),
    "train.device": Key("auto", OneOf(("auto", "cpu", "cuda")), "where to train (auto: CUDA "
                        "when available)"),
    "output": Key("runs/experiment", Text("a folder"), "the run's folder (checkpoints, "
                  "log.jsonl, config.yaml)"),
    "teacher": Key(None, Text("a checkpoint path"), "a binface checkpoint (any family) to "
                   "distil from", null=True),
    "distill.cosine": Key(0.0, LossWeight(), "1 - cos(student, teacher) embedding"),
    "distill.l2": Key(0.0, LossWeight(), "MSE between embeddings"),
    "distill.margin": Key(0.0, LossWeight(), "MarginDistillation: towards the teacher's angles "
                          "to its centres"),
    "distill.logit_kd": Key(0.0, LossWeight(), "KL of softened logits over the teacher's class "
                            "centres"),
    "distill.attention": Key(0.0, LossWeight(), "attention transfer: normalised spatial "
                             "attention maps of distill.attention_pairs, squared error"),
    "distill.attention_pairs": Key([], StagePairs(), "stages whose attention maps are matched: "
                                   "[[teacher_module, student_module], ...]"),
    "distill.temperature": Key(4.0, Number(0.0, lo_open=True), "temperature of logit_kd"),
    "distill.margin_m": Key(0.5, Number(0.0, 2.0), "largest class margin of MarginDistillation"),
}

DISTILL_LOSSES = tuple(k.split(".", 1)[1] for k, v in SCHEMA.items()
                       if isinstance(v.type, LossWeight))
SECTIONS = tuple(dict.fromkeys(k.split(".")[0] for k in SCHEMA if "." in k))
MAPPINGS = {k for k, v in SCHEMA.items() if isinstance(v.type, Mapping)}


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return out


DEFAULTS: dict[str, Any] = _nest({k: v.default for k, v in SCHEMA.items()})


def _walk(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every key, descending into the sections only."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in SECTIONS:
            yield from _walk(v, key + ".")
        else:
            yield key, v


def _unknown(key: str, where: str) -> BinfaceError:
    close = difflib.get_close_matches(key, [*SCHEMA, *SECTIONS], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return BinfaceError(f"unknown config key {key!r} in {where}{hint}")


# ---------------------------------------------------------------- layering
def _merge(base: dict, update: dict, where: str, prefix: str = "") -> None:
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in base:
            raise _unknown(key, where)
        if key in SECTIONS:
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
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise BinfaceError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise BinfaceError(f"config file {path} nests too deeply to be a config") from None
    except OSError as exc:
        raise BinfaceError(f"config file {path}: cannot read ({exc.strerror})") from None
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
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key, value


def _set(cfg: dict, key: str, value: Any, where: str) -> None:
    """Set a dotted key; below a mapping-typed key (``model_kwargs.x``) any name goes."""
    if key in SECTIONS:
        raise BinfaceError(f"config key {key!r} in {where} is a section: set its keys "
                           f"(e.g. {next(k for k in SCHEMA if k.startswith(key + '.'))}=...)")
    mapping = next((m for m in MAPPINGS if key.startswith(m + ".")), None)
    if key not in SCHEMA and mapping is None:
        raise _unknown(key, where)
    *path, last = key.split(".")
    node = cfg
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value


def validate(cfg: dict) -> dict:
    """Check every key against :data:`SCHEMA` (normalising in place); returns ``cfg``."""
    for key, _ in _walk(cfg):
        if key not in SCHEMA:
            raise _unknown(key, "the config")
    for key, spec in SCHEMA.items():
        *path, last = key.split(".")
        node = cfg
        for p in path:
            node = node[p]
        node[last] = spec.check(key, node.get(last, copy.deepcopy(spec.default)))
    if cfg["train"]["amp"] == "fp16" and cfg["train"]["device"] == "cpu":
        raise _bad("train.amp", "fp16", "bf16 or none on CPU (fp16 needs CUDA)")
    return cfg


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


def list_keys() -> str:
    """The key table of ``binface train --list-keys``: key, type, default, help."""
    rows = [("key", "type", "default", "help")]
    rows += [(k, v.describe(), yaml.safe_dump([v.default], default_flow_style=True).strip()[1:-1],
              v.help) for k, v in SCHEMA.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True))
                     + "  " + r[3] for r in rows) + "\n"
