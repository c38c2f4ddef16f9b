"""Write the synthetic benchmark: ``train.rec/.idx`` + ``property`` and three packs.

Every image has its own seed, derived from the master seed and its place in the
benchmark (identity and image index, or pack, pair and slot), so the files are
byte-identical whatever the number of worker processes. Workers render chunks;
the parent writes them in order.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from binface.data.files import check_writable_dir
from binface.data.recordio import FaceRecordWriter
from binface.data.synth.faces import Identity, render, sample_identity, sample_nuisance, to_jpeg
from binface.data.verification import write_pack
from binface.errors import BinfaceError
from binface.progress import progress as progress_bar

# pack name -> (file, real number of pairs)
PACKS = {
    "lfw": ("synth_lfw.bin", 6000),
    "cfp_fp": ("synth_cfp_fp.bin", 7000),
    "agedb_30": ("synth_agedb_30.bin", 6000),
}
FOLDS = 10
_TAG_IDENTITY, _TAG_TRAIN, _TAG_PACK, _TAG_PLAN = 1, 2, 3, 4
_CHUNK = 40  # images per task
_PACK_GID_STRIDE = 1 << 24  # identity ids of pack k start at identities + k * stride


@dataclass
class SynthResult:
    """What ``generate`` wrote and how long it took."""

    out_dir: Path
    train_images: int
    identities: int
    packs: dict[str, int] = field(default_factory=dict)  # file name -> pairs
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return self.train_images + 2 * sum(self.packs.values())


# ----------------------------------------------------------------------------- worker side
_IDENTITIES: dict[tuple[int, int], Identity] = {}


def _identity(seed: int, gid: int) -> Identity:
    key = (seed, gid)
    ident = _IDENTITIES.get(key)
    if ident is None:
        if len(_IDENTITIES) > 4096:
            _IDENTITIES.clear()
        ident = sample_identity(np.random.default_rng([seed, _TAG_IDENTITY, gid]))
        _IDENTITIES[key] = ident
    return ident


def identity(seed: int, gid: int) -> Identity:
    """The traits of identity ``gid`` of the benchmark made with ``seed``."""
    return _identity(seed, gid)


def render_image(
    seed: int, gid: int, key: tuple[int, ...], profile: str, difficulty: float,
    age: float | None = None,
) -> tuple[np.ndarray, int]:
    """(image, JPEG quality) of identity ``gid``; ``key`` names its place (its seed)."""
    rng = np.random.default_rng([seed, *key])
    ident = _identity(seed, gid)
    nz = sample_nuisance(rng, ident, profile, difficulty, age=age)
    return render(ident, nz, rng), nz.jpeg


def _render_task(task: tuple) -> list[bytes]:
    """Render a chunk of ``(gid, key, profile, age)`` specs to JPEG bytes."""
    seed, difficulty, specs = task
    out = []
    for gid, key, profile, age in specs:
        img, quality = render_image(seed, gid, key, profile, difficulty, age)
        out.append(to_jpeg(img, quality))
    return out


def _tune_malloc() -> None:
    """Keep numpy's short-lived 100-400 KB arrays on the heap, off mmap.

    glibc maps and unmaps every allocation above 128 KB by default; for a renderer
    that makes a dozen such temporaries per image the page faults cost more than
    the arithmetic. Applied in worker processes only.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------------------- planning
def _pack_pairs(pairs: int | dict[str, int] | None) -> dict[str, int]:
    if pairs is None:
        sizes = {name: n for name, (_, n) in PACKS.items()}
    elif isinstance(pairs, dict):
        unknown = set(pairs) - set(PACKS)
        if unknown:
            raise BinfaceError(f"unknown pack {sorted(unknown)[0]!r}; packs are {list(PACKS)}")
        sizes = {name: int(pairs.get(name, 0)) for name in PACKS}
    else:
        sizes = {name: int(pairs) for name in PACKS}
    for name, n in sizes.items():
        if n < 0 or n % (2 * FOLDS):
            raise BinfaceError(f"{name}: pairs must be a non-negative multiple of {2 * FOLDS} "
                               f"(10 folds, half of each genuine), got {n}")
    return {name: n for name, n in sizes.items() if n > 0}


def _plan_pack(
    name: str, n_pairs: int, first_gid: int, seed: int, difficulty: float
) -> tuple[list[tuple], list[bool], int]:
    """Specs of the 2N images and the labels of a pack, 10 identity-disjoint folds."""
    rng = np.random.default_rng([seed, _TAG_PLAN, list(PACKS).index(name)])
    per_fold = n_pairs // FOLDS
    ids_per_fold = max(4, per_fold // 4)
    pack_idx = list(PACKS).index(name)
    specs: list[tuple] = []
    issame: list[bool] = []
    for fold in range(FOLDS):
        pool = first_gid + fold * ids_per_fold + np.arange(ids_per_fold)
        for j in range(per_fold):
            same = j < per_fold // 2  # as in the real packs: genuine first, then impostors
            a = int(rng.choice(pool))
            b = a if same else int(rng.choice(pool[pool != a]))
            pair = fold * per_fold + j
            if name == "cfp_fp":
                profiles, ages = ("cfp_frontal", "cfp_profile"), (None, None)
            elif name == "agedb_30":
                young = float(rng.uniform(16, 34))  # AgeDB-30: a gap of about 30 years
                old = young + float(rng.uniform(27, 33))
                ages = (young, old) if rng.random() < 0.5 else (old, young)
                profiles = ("agedb", "agedb")
            else:
                profiles, ages = ("lfw", "lfw"), (None, None)
            for slot, gid in enumerate((a, b)):
                specs.append((gid, (_TAG_PACK, pack_idx, pair, slot), profiles[slot], ages[slot]))
            issame.append(same)
    return specs, issame, FOLDS * ids_per_fold


def _chunks(specs: list[tuple], size: int = _CHUNK) -> list[list[tuple]]:
    return [specs[i: i + size] for i in range(0, len(specs), size)]


# ----------------------------------------------------------------------------- driver
class _Renderer:
    """Renders chunks in order, in-process or on a spawn pool."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = None
        if workers > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_tune_malloc)

    def map(self, seed: int, difficulty: float, specs: list[tuple], bar) -> Iterator[bytes]:
        tasks = [(seed, difficulty, chunk) for chunk in _chunks(specs)]
        results = self.pool.map(_render_task, tasks) if self.pool else map(_render_task, tasks)
        for jpegs in results:
            bar.update(len(jpegs))
            yield from jpegs

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def generate(
    out_dir: str | os.PathLike,
    identities: int = 1000,
    images_per_identity: int = 20,
    seed: int = 0,
    difficulty: float = 1.0,
    pairs: int | dict[str, int] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> SynthResult:
    """Write the synthetic benchmark to ``out_dir``.

    ``pairs`` sets the pack sizes: None for the real ones (6000 / 7000 / 6000), an
    int for all three, or a dict per pack (0 leaves a pack out); sizes are
    multiples of 20. ``workers`` defaults to the CPU count.
    """
    if identities < 1 or images_per_identity < 1:
        raise BinfaceError(f"need at least one identity and one image each, got {identities} "
                           f"identities x {images_per_identity} images")
    if not 0 <= difficulty <= 3:
        raise BinfaceError(f"difficulty must be in [0, 3], got {difficulty}")
    check_seed(seed)
    sizes = _pack_pairs(pairs)
    out = Path(out_dir)
    check_writable_dir(out)
    workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
    start = time.perf_counter()
    train_specs = [(gid, (_TAG_TRAIN, gid, j), "train", None)
                   for gid in range(identities) for j in range(images_per_identity)]
    plans = {}
    for name, n in sizes.items():  # each pack draws from its own range of identities
        first = identities + _PACK_GID_STRIDE * list(PACKS).index(name)
        specs, issame, _ = _plan_pack(name, n, first, seed, difficulty)
        plans[name] = (specs, issame)
    total = len(train_specs) + sum(len(s) for s, _ in plans.values())
    renderer = _Renderer(min(workers, max(1, total // _CHUNK)))
    result = SynthResult(out, len(train_specs), identities)
    try:
        with progress_bar(total=total, desc="synth", unit="img", disable=not progress) as bar:
            with FaceRecordWriter(out / "train") as writer:
                for (gid, *_), jpeg in zip(
                    train_specs, renderer.map(seed, difficulty, train_specs, bar), strict=True
                ):
                    writer.add(gid, jpeg)
            for name, (specs, issame) in plans.items():
                bins = list(renderer.map(seed, difficulty, specs, bar))
                write_pack(out / PACKS[name][0], bins, issame)
                result.packs[PACKS[name][0]] = len(issame)
    finally:
        renderer.close()
    result.seconds = time.perf_counter() - start
    return result


def check_seed(seed: int) -> int:
    """The master seed: an integer in 0 .. 2**63 - 1 (numpy seeds are non-negative)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
        0 <= seed < 1 << 63
    ):
        raise BinfaceError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    return int(seed)


def output_files(out_dir: str | os.PathLike, pairs: int | dict[str, int] | None = None
                 ) -> list[Path]:
    """The files ``generate`` writes into ``out_dir`` for these pack sizes."""
    out = Path(out_dir)
    return [out / "train.rec", out / "train.idx", out / "property",
            *(out / PACKS[name][0] for name in _pack_pairs(pairs))]


def identity_sheet(
    path: str | os.PathLike,
    identities: int = 8,
    images: int = 8,
    seed: int = 0,
    difficulty: float = 1.0,
) -> Path:
    """PNG of sample identities (rows) across nuisance, profile views and age (columns)."""
    from binface.data.sheet import contact_sheet

    check_seed(seed)

    columns = ["train"] * max(images - 4, 1) + ["lfw", "cfp_profile", "agedb", "agedb"]
    columns = columns[-images:] if images < len(columns) else columns
    rows, caps = [], []
    for gid in range(identities):
        row, cap = [], []
        for j, profile in enumerate(columns):
            age = None
            if profile == "agedb":  # the last two columns: young and old
                age = 20.0 if j == len(columns) - 2 else 62.0
            img, _ = render_image(seed, gid, (_TAG_TRAIN, gid, j), profile, difficulty, age)
            row.append(img)
            cap.append(f"age {age:.0f}" if age else profile.replace("cfp_", ""))
        rows.append(row)
        caps.append(cap)
    return contact_sheet(rows, path, captions=caps, row_labels=[f"id {g}" for g in
                                                                 range(identities)])
