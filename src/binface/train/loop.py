"""The training loop: margin head, optimiser, schedule, checkpoints, verification, DDP.

Short and readable in the spirit of insightface's arcface_torch (docs/training.md
describes the recipe). :class:`Trainer` builds its parts in named steps (data,
model, head, schedule, optimiser); :meth:`Trainer.fit` then runs the loop. One
optimiser step reads ``grad_accum`` micro-batches of ``batch_size`` images per
process, in an order that a resumed run reproduces exactly (:mod:`binface.train.data`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from binface.errors import BinfaceError
from binface.fileio import check_writable_dir, stale_temporaries, write_text
from binface.models.loading import build_model, family_of, load_checkpoint
from binface.nn import PartialFC, apply_weight_clip, make_margin, set_kernel_quantization
from binface.nn.memory import keep_freed_memory
from binface.progress import progress as progress_bar
from binface.train import distributed as D
from binface.train.checkpoint import FORMAT, VERSION, save_atomic
from binface.train.config import dump_config
from binface.train.data import EpochBatches, FlipIndexed, open_train_dataset
from binface.train.optim import OPTIMIZERS, lr_lambda

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# the files of a run in its output folder
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "log.jsonl")


class TrainingError(BinfaceError):
    """Training stopped (NaN loss, ...): the message says where and what was kept."""


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch: the weights and the head start from `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def embedding_size(model: nn.Module, device: torch.device) -> int:
    """The model's ``embedding_size``, or the width of its output on one 112x112 image."""
    size = getattr(model, "embedding_size", None)
    if size:
        return int(size)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 112, 112, device=device))
    model.train(was)
    return int(out.reshape(1, -1).shape[1])


class Trainer:
    """Train a face model with a margin head; ``fit()`` returns the run's summary.

    ``model`` and ``train_set`` may be passed in (Python API); otherwise they come
    from the config (``model`` from the registry, ``data.train`` from disk).
    """

    def __init__(self, cfg: dict, model: nn.Module | None = None,
                 train_set: Dataset | None = None, resume: bool = False,
                 overwrite: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.info = D.setup(cfg["train"]["device"])
        self.device = self.info.device
        self.progress = progress and self.info.main
        self.out = Path(cfg["output"])
        self._prepare_output(resume, overwrite)
        seed_everything(cfg["train"]["seed"])
        self._build_data(train_set)
        self._build_model(model)
        self._build_head()
        self._build_schedule()
        self._build_optimizer()
        # the run's state: what a checkpoint saves and --resume restores
        self.step = 0
        self.epoch = 0
        self.micro_in_epoch = 0
        self.best: dict = {"accuracy": -1.0, "step": None, "results": {}}
        self.history: list[dict] = []
        self.packs: list | None = None  # verification packs, read at the first validation
        self.tb = None  # a TensorBoard writer while fit() runs (when tensorboard is installed)
        if resume:
            self._resume()

    # ------------------------------------------------------------------ construction steps
    def _prepare_output(self, resume: bool, overwrite: bool) -> None:
        """Check the run folder before any work; nothing in it changes until ``fit()``."""
        last = self.out / "last.pt"
        self.resumed = resume
        if self.out.exists() and not self.out.is_dir():
            raise BinfaceError(f"output={self.out} is a file, not a folder")
        if resume:
            if not last.is_file():
                raise BinfaceError(f"--resume: no checkpoint {last} to resume from")
        else:
            held = [p.name for p in self._run_files() if p.exists()]
            if held and not overwrite:
                raise BinfaceError(f"{self.out} already holds a run ({', '.join(held)}); use "
                                   "--resume to continue it, --overwrite to replace it, or "
                                   "another output=")
        if self.info.main:
            check_writable_dir(self.out)

    def _run_files(self) -> list[Path]:
        """What a run writes in its folder (and a new run replaces)."""
        files = [self.out / f for f in RUN_FILES]
        return files + sorted(self.out.glob("last.optim.rank*.pt")) if self.out.is_dir() \
            else files

    def _build_data(self, train_set: Dataset | None) -> None:
        """The training set (flips drawn by the sampler) and its number of classes."""
        dc = self.cfg["data"]
        if train_set is None:
            if not dc["train"]:
                raise BinfaceError("config key data.train is not set: give a .rec file or an "
                                   "image folder (e.g. data.train=/data/ms1m/train.rec)")
            train_set = open_train_dataset(dc["train"], skip_bad=dc["skip_bad"])
        self.num_classes = int(getattr(train_set, "num_classes", 0) or 0)
        if self.num_classes <= 0:
            raise BinfaceError("the training set does not say how many classes it has")
        self.data = FlipIndexed(train_set)

    def _build_model(self, model: nn.Module | None) -> None:
        """The student: the given module or the config's registry model; DDP around it."""
        tc = self.cfg["train"]
        if model is None:
            self.model_name = self.cfg["model"]
            model = build_model(self.model_name, self.cfg["model_kwargs"], where="config")
        else:
            self.model_name = getattr(model, "model_name", None) or type(model).__name__
        self._init_ck = self._load_init(model) if tc["init"] else None
        if tc["qat"] != "none":
            self._prepare_qat(model)
        if self._init_ck is not None and self._init_ck.get("qat", "none") != "none":
            self._init_weights(model, self._init_ck["state_dict"])  # its fake-quant layers too
        self.model = model.to(self.device)
        if tc["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.family = family_of(self.model, self.model_name)
        self.embedding_size = embedding_size(self.model, self.device)
        self.ddp = None
        if self.info.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _load_init(self, model: nn.Module) -> dict:
        """``train.init``: a float checkpoint's weights go in now (before QAT wraps the
        layers); a QAT checkpoint's after, into layers built the same way."""
        path = self.cfg["train"]["init"]
        ck = load_checkpoint(path)
        if ck["model"] != self.model_name:
            raise BinfaceError(f"train.init={path} holds model {ck['model']!r}, the config "
                               f"says {self.model_name!r}")
        qat = ck.get("qat", "none")
        if qat != "none" and qat != self.cfg["train"]["qat"]:
            raise BinfaceError(f"train.init={path} was trained with train.qat={qat}; set "
                               f"train.qat={qat} to continue it")
        if qat == "none":
            self._init_weights(model, ck["state_dict"])
        return ck

    def _init_weights(self, module: nn.Module, state: dict) -> None:
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise BinfaceError(f"train.init={self.cfg['train']['init']}: its weights do not "
                               f"fit {self.model_name} ({str(exc).splitlines()[0][:160]})") \
                from None

    def _prepare_qat(self, model: nn.Module) -> None:
        """Fake-quantise the float layers (``train.qat``) before the optimiser sees them."""
        from binface.nn.qat import is_qat, prepare_qat

        if family_of(model, self.model_name) == "binary":
            raise BinfaceError(f"train.qat={self.cfg['train']['qat']} is for float models; "
                               f"{self.model_name} is binary (its binary layers are +-1 already)")
        if not is_qat(model):
            prepare_qat(model, self.cfg["train"]["qat"])
        if not is_qat(model):
            raise BinfaceError(f"train.qat={self.cfg['train']['qat']}: {self.model_name} has "
                               "no nn.Conv2d or nn.Linear layer to quantise")

    def _build_head(self) -> None:
        """The margin head over (a shard of) the class centres, and the distiller if any."""
        hc = self.cfg["head"]
        margin = make_margin(hc["margin"], hc["s"], hc["m1"], hc["m2"], hc["m3"], hc["m"])
        self.head = PartialFC(margin, self.embedding_size, self.num_classes,
                              hc["sample_rate"], seed=self.cfg["train"]["seed"]).to(self.device)
        head = dict((self._init_ck or {}).get("head_state") or {})
        if torch.is_tensor(head.get("weight")) and tuple(head["weight"].shape) == (
                self.num_classes, self.embedding_size):
            start = self.head.class_start
            head["weight"] = head["weight"][start:start + self.head.num_local]
            self._init_weights(self.head, head)
        self._init_ck = None  # not kept: a checkpoint's worth of memory
        self.distiller = None
        if self.cfg["teacher"]:
            from binface.train.distill import Distiller

            self.distiller = Distiller(self.cfg["teacher"], self.embedding_size,
                                       self.cfg["distill"], hc["s"],
                                       student=self.model).to(self.device)
            self.distiller.check_classes(self.num_classes)

    def _build_schedule(self) -> None:
        """Step counts: per epoch, in the whole run, where to stop, where stage two begins."""
        tc = self.cfg["train"]
        self.global_batch = tc["batch_size"] * self.info.world
        self.images_per_step = self.global_batch * tc["grad_accum"]
        micro_per_epoch = len(self.data) // self.global_batch
        if micro_per_epoch < tc["grad_accum"]:
            raise BinfaceError(f"the training set has {len(self.data)} images: too few for one "
                               f"step of {self.images_per_step} (batch_size x processes x "
                               "grad_accum)")
        self.steps_per_epoch = micro_per_epoch // tc["grad_accum"]
        self.total_steps = max(1, int(round(tc["epochs"] * self.steps_per_epoch)))
        self.stop_step = min(self.total_steps, tc["max_steps"] or self.total_steps)
        self.stage1_steps = (int(tc["stage1_fraction"] * self.total_steps)
                             if tc["two_stage"] else 0)
        self.val_every = tc["val_every"] or self.steps_per_epoch
        self.checkpoint_every = tc["checkpoint_every"] or self.steps_per_epoch

    def _build_optimizer(self) -> None:
        """Optimiser (auto: Adam for binary networks), LR schedule, mixed precision."""
        oc, sc, tc = self.cfg["optim"], self.cfg["schedule"], self.cfg["train"]
        self.optim_name = oc["name"] if oc["name"] != "auto" else (
            "adam" if self.family == "binary" else "sgd")
        entry = OPTIMIZERS[self.optim_name]
        lr = entry.auto_lr(self.images_per_step) if oc["lr"] == "auto" else oc["lr"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += list(self.head.parameters())
        if self.distiller is not None:
            params += list(self.distiller.proj.parameters())
        self.opt = entry.build(params, lr, oc)
        warm = int(sc["warmup_epochs"] * self.steps_per_epoch)
        min_ratio = sc["min_lr"] / lr if lr > 0 else 0.0
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_lambda(s, self.total_steps, warm, sc["name"], sc["power"],
                                          min_ratio))
        if tc["amp"] == "fp16" and self.device.type != "cuda":
            raise BinfaceError("train.amp=fp16 needs a CUDA device; use bf16 on CPU")
        self.amp_dtype = AMP_DTYPES[tc["amp"]]
        self.scaler = torch.amp.GradScaler("cuda") if tc["amp"] == "fp16" else None

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        head_state = {k: v.detach().cpu() for k, v in self.head.state_dict().items()}
        head_state["weight"] = D.gather_rows(self.head.weight.detach()).cpu()
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model_name,
            "model_kwargs": dict(self.cfg["model_kwargs"]),
            "qat": self.cfg["train"]["qat"],  # load_model rebuilds the fake-quant layers
            "family": self.family,
            "embedding_size": self.embedding_size,
            "num_classes": self.num_classes,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "head_state": head_state,
            "distill_proj": (self.distiller.proj.state_dict()
                             if self.distiller is not None else None),
            # under DDP each rank's optimiser holds its own class-centre shard: per-rank files
            "optimizer": self.opt.state_dict() if self.info.world == 1 else None,
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "micro_in_epoch": self.micro_in_epoch,
            "rng_torch": torch.get_rng_state(),
            "best": json.loads(json.dumps(self.best)),
            "config": json.loads(json.dumps(self.cfg)),
        }

    def save(self, name: str) -> Path | None:
        """Write a checkpoint; weights that are not finite are never written (a checkpoint
        on disk is always a good one)."""
        state = self._state()  # collective under DDP: every rank takes part
        bad = [k for k, v in (*state["state_dict"].items(), *state["head_state"].items())
               if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise self._stopped(f"{len(bad)} non-finite weight tensors (e.g. {bad[0]})")
        if self.info.world > 1 and name == "last.pt":
            save_atomic(self.opt.state_dict(), self.out / f"last.optim.rank{self.info.rank}.pt")
        if not self.info.main:
            return None
        path = self.out / name
        save_atomic(state, path)
        return path

    def _resume(self) -> None:
        ck = load_checkpoint(self.out / "last.pt", map_location=self.device)
        if ck["model"] != self.model_name:
            raise BinfaceError(f"--resume: {self.out / 'last.pt'} holds model {ck['model']!r}, "
                               f"the config says {self.model_name!r}")
        qat = ck.get("qat", "none")
        if qat != self.cfg["train"]["qat"]:
            raise BinfaceError(f"--resume: {self.out / 'last.pt'} was trained with train.qat="
                               f"{qat}, the config says {self.cfg['train']['qat']}")
        self.model.load_state_dict(ck["state_dict"])
        head = dict(ck["head_state"])
        full = head.pop("weight")
        if full.shape[0] != self.num_classes:
            raise BinfaceError(f"--resume: checkpoint has {full.shape[0]} classes, the data "
                               f"{self.num_classes}")
        start = self.head.class_start
        head["weight"] = full[start:start + self.head.num_local]
        self.head.load_state_dict(head)
        if self.distiller is not None and ck.get("distill_proj") is not None:
            self.distiller.proj.load_state_dict(ck["distill_proj"])
        if ck.get("optimizer") is not None:
            self.opt.load_state_dict(ck["optimizer"])
        elif self.info.world > 1:
            per_rank = self.out / f"last.optim.rank{self.info.rank}.pt"
            if not per_rank.is_file():
                raise BinfaceError(f"--resume: {per_rank} is missing (resume with the same "
                                   "number of processes)")
            self.opt.load_state_dict(torch.load(per_rank, map_location=self.device,
                                                weights_only=True))
        self.sched.load_state_dict(ck["scheduler"])
        self.step, self.epoch = int(ck["step"]), int(ck["epoch"])
        self.micro_in_epoch = int(ck["micro_in_epoch"])
        torch.set_rng_state(ck["rng_torch"].cpu())
        self.best = ck["best"]

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict:
        from binface.eval.run import evaluate_pack, load_eval_pack

        paths = self.cfg["data"]["val"]
        if not paths:
            return {}
        if self.packs is None:
            self.packs = [load_eval_pack(p, self.cfg["data"]["val_pairs"]) for p in paths]
        results = {}
        if self.info.main:
            for pack in self.packs:
                r = evaluate_pack(self.model, pack, batch_size=self.cfg["train"]["batch_size"])
                results[pack.name] = {"accuracy": r["accuracy"], "std": r["std"],
                                      "pairs": r["pairs"]}
        return D.broadcast_object(results)  # every rank decides the same about "best"

    # ------------------------------------------------------------------ the loop
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        tc = self.cfg["train"]
        while True:
            sampler = EpochBatches(len(self.data), tc["batch_size"], self.info.rank,
                                   self.info.world, tc["seed"], self.epoch, self.micro_in_epoch)
            loader = DataLoader(self.data, batch_sampler=sampler,
                                num_workers=self.cfg["data"]["workers"],
                                persistent_workers=False)
            for x, y in loader:
                self.micro_in_epoch += 1
                yield x, y
            self.epoch += 1
            self.micro_in_epoch = 0

    def _log(self, record: dict) -> None:
        """Keep ``record`` in ``history``; append it to log.jsonl (and TensorBoard) on rank 0."""
        self.history.append(record)
        if self.info.main:
            with open(self.out / "log.jsonl", "a") as fh:  # one line per record, as it comes
                fh.write(json.dumps(record) + "\n")
            if self.tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "step":
                        self.tb.add_scalar(k, v, record["step"])

    def _open_run(self) -> None:
        """Start writing the run folder: a new run first removes the run it replaces
        (allowed by --overwrite, checked at construction) and temporaries a killed
        writer left; then config.yaml, and TensorBoard when installed (rank 0)."""
        if not self.info.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for path in self._run_files():
            for tmp in stale_temporaries(path):
                tmp.unlink(missing_ok=True)
            if not self.resumed and path.name != "config.yaml":
                path.unlink(missing_ok=True)
        write_text(self.out / "config.yaml", dump_config(self.cfg))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        except Exception:  # tensorboard not installed: JSON lines only
            self.tb = None

    def _close_run(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def _train_mode(self) -> None:
        """Modules in training mode; the binary recipe's stage two quantizes the kernels."""
        self.model.train()
        self.head.train()
        if self.distiller is not None:
            self.distiller.train()
        if self.stage1_steps:
            set_kernel_quantization(self.model, self.step >= self.stage1_steps)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Margin loss (plus distillation) of one micro-batch; the logged distill parts."""
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else nullcontext())
        with autocast:
            emb = (self.ddp or self.model)(x)
        emb = emb.float().reshape(x.shape[0], -1)
        loss = self.head(emb, y)
        if self.distiller is None:
            return loss, {}
        extra, logged = self.distiller(emb, x, y, self.step, self.total_steps)
        return loss + extra, logged

    def _optimizer_step(self) -> None:
        """Unscale (fp16), clip the gradient norm, step, advance the schedule, clip weights."""
        if self.scaler:
            self.scaler.unscale_(self.opt)
        if self.cfg["train"]["grad_clip"]:
            params = [p for g in self.opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg["train"]["grad_clip"])
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        apply_weight_clip(self.model)

    def _train_step(self, batches: Iterator) -> tuple[float, dict]:
        """One optimiser step over ``grad_accum`` micro-batches: (mean loss, distill parts).

        A non-finite loss returns at once, before any gradient is applied.
        """
        self._train_mode()
        accum = self.cfg["train"]["grad_accum"]
        self.opt.zero_grad(set_to_none=True)
        total, parts = 0.0, {}
        for micro in range(accum):
            x, y = next(batches)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device)
            if self.cfg["train"]["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            # under DDP, gradients are all-reduced once, after the last micro-batch
            sync = (self.ddp.no_sync() if self.ddp is not None and micro < accum - 1
                    else nullcontext())
            with sync:
                loss, logged = self._loss(x, y)
                for k, v in logged.items():
                    parts[k] = parts.get(k, 0.0) + v / accum
                if not torch.isfinite(loss):
                    return float(loss.detach()), parts
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += float(loss.detach()) / accum
        self._optimizer_step()
        return total, parts

    def _stopped(self, what: float | str) -> TrainingError:
        """The error of a diverged run: a non-finite loss, or weights (``what``)."""
        kept = self.out / "last.pt"
        where = (f"the last good checkpoint {kept} is kept" if kept.exists()
                 else "no checkpoint had been written yet")
        if isinstance(what, str):
            when = f"{what} after step {self.step} (epoch {self.epoch})"
        else:
            when = f"loss is {what} at step {self.step + 1} (epoch {self.epoch})"
        return TrainingError(f"{when}: training stopped; {where}. Lower optim.lr or set "
                             "train.grad_clip")

    def _due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.stop_step

    def _verify(self) -> None:
        """Verification on ``data.val``; a new best mean accuracy writes best.pt."""
        results = self.validate()
        if not results:
            return
        mean = float(np.mean([r["accuracy"] for r in results.values()]))
        self._log({"step": self.step, "val": results, "val_mean": mean})
        if mean > self.best["accuracy"]:
            self.best = {"accuracy": mean, "step": self.step, "results": results}
            self.save("best.pt")

    def fit(self) -> dict:
        """Train until ``stop_step``; returns the best verification results and paths."""
        self._open_run()
        keep_freed_memory()  # any model, zoo or not: reuse the step's freed maps
        batches = self._batches()
        bar = progress_bar(total=self.stop_step, initial=self.step, disable=not self.progress,
                           desc=f"train {self.model_name}", unit="step", dynamic_ncols=True)
        t0, seen = time.perf_counter(), 0
        try:
            while self.step < self.stop_step:
                lr = self.opt.param_groups[0]["lr"]
                loss, parts = self._train_step(batches)
                if not math.isfinite(loss):
                    raise self._stopped(loss)
                self.step += 1
                seen += self.images_per_step
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
                if self._due(self.cfg["train"]["log_every"]):
                    self._log({"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr,
                               "images_per_s": rate, **parts})
                if self._due(self.val_every):
                    self._verify()
                if self._due(self.checkpoint_every):
                    self.save("last.pt")
        finally:
            bar.close()
            self._close_run()
        if self.stage1_steps:
            set_kernel_quantization(self.model, True)
        summary = {"model": self.model_name, "steps": self.step, "epochs": self.epoch,
                   "output": str(self.out), "best": self.best,
                   "last_checkpoint": str(self.out / "last.pt")}
        if self.info.main and self.best["step"] is not None:
            summary["best_checkpoint"] = str(self.out / "best.pt")
        return summary
