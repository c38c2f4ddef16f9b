"""The training loop: margin head, optimiser, schedule, checkpoints, verification, DDP.

Short and readable in the spirit of insightface's arcface_torch. One optimiser
step reads ``grad_accum`` micro-batches of ``batch_size`` images per process. The
data order and the flips are drawn from generators seeded by (seed, epoch), so a
resumed run reads exactly the batches that the uninterrupted run would have read.
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
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from binface.errors import BinfaceError
from binface.nn import PartialFC, apply_weight_clip, make_margin, set_kernel_quantization
from binface.progress import progress as progress_bar
from binface.train import distributed as D
from binface.train.checkpoint import FORMAT, VERSION, load_checkpoint, save_atomic


class TrainingError(BinfaceError):
    """Training stopped (NaN loss, ...): the message says where and what was kept."""


class FlipIndexed(Dataset):
    """Items addressed as (index, flip): flips come from the sampler, not the worker.

    That makes augmentation a function of (seed, epoch) and so resumable exactly.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base
        if hasattr(base, "flip"):
            base.flip = False

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, bool]):
        index, flip = item
        x, y = self.base[int(index)]
        return (x.flip(-1) if flip else x), int(y)


class EpochBatches:
    """Per-process batches of (index, flip) for one epoch, from micro-batch ``start``."""

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int, epoch: int,
                 start: int = 0) -> None:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self.perm = torch.randperm(n, generator=g)
        self.flips = torch.rand(n, generator=g) < 0.5
        self.batch, self.rank, self.world, self.start = batch, rank, world, start
        self.count = n // (batch * world)  # micro-batches per epoch (last partial dropped)

    def __len__(self) -> int:
        return self.count - self.start

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for b in range(self.start, self.count):
            lo = (b * self.world + self.rank) * self.batch
            idx = self.perm[lo:lo + self.batch]
            yield [(int(i), bool(self.flips[i])) for i in idx]


def lr_lambda(step: int, total: int, warmup: int, name: str, power: float,
              min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step`` (per iteration)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    if name == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * (1 - progress) ** power


def _family(name: str) -> str:
    from binface.models import model_info

    try:
        return model_info(name).family
    except BinfaceError:
        return "custom"


def _embedding_size(model: nn.Module, device: torch.device) -> int:
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
        tc = cfg["train"]
        self.info = D.setup(tc["device"])
        self.device = self.info.device
        self.progress = progress and self.info.main
        self.out = Path(cfg["output"])
        self._check_output(resume, overwrite)
        self._seed(tc["seed"])

        from binface.models import create_model
        from binface.train.data import open_train_dataset

        if train_set is None:
            if not cfg["data"]["train"]:
                raise BinfaceError("config key data.train is not set: give a .rec file or an "
                                   "image folder (e.g. data.train=/data/ms1m/train.rec)")
            train_set = open_train_dataset(cfg["data"]["train"], skip_bad=cfg["data"]["skip_bad"])
        self.num_classes = int(getattr(train_set, "num_classes", 0) or 0)
        if self.num_classes <= 0:
            raise BinfaceError("the training set does not say how many classes it has")
        self.data = FlipIndexed(train_set)
        self.model_name = (cfg["model"] if model is None
                           else getattr(model, "model_name", None) or type(model).__name__)
        self.model = (model if model is not None
                      else create_model(cfg["model"], **cfg["model_kwargs"])).to(self.device)
        if tc["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.family = getattr(self.model, "family", None) or _family(self.model_name)
        self.embedding_size = _embedding_size(self.model, self.device)

        hc = cfg["head"]
        margin = make_margin(hc["margin"], hc["s"], hc["m1"], hc["m2"], hc["m3"], hc["m"])
        self.head = PartialFC(margin, self.embedding_size, self.num_classes,
                              hc["sample_rate"], seed=tc["seed"]).to(self.device)
        self.distiller = None
        if cfg["teacher"]:
            from binface.train.distill import Distiller

            self.distiller = Distiller(cfg["teacher"], self.embedding_size, cfg["distill"],
                                       hc["s"]).to(self.device)
            self.distiller.check_classes(self.num_classes)

        self.global_batch = tc["batch_size"] * self.info.world
        self.micro_per_epoch = len(self.data) // self.global_batch
        if self.micro_per_epoch < tc["grad_accum"]:
            raise BinfaceError(f"the training set has {len(self.data)} images: too few for one "
                               f"step of {self.global_batch * tc['grad_accum']} (batch_size x "
                               "processes x grad_accum)")
        self.steps_per_epoch = self.micro_per_epoch // tc["grad_accum"]
        self.total_steps = max(1, int(round(tc["epochs"] * self.steps_per_epoch)))
        self.stop_step = min(self.total_steps, tc["max_steps"] or self.total_steps)
        self.stage1_steps = (int(tc["stage1_fraction"] * self.total_steps)
                             if tc["two_stage"] else 0)

        self.opt = self._optimizer()
        sc = cfg["schedule"]
        warm = int(sc["warmup_epochs"] * self.steps_per_epoch)
        base = self.opt.param_groups[0]["lr"]
        min_ratio = sc["min_lr"] / base if base > 0 else 0.0
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_lambda(s, self.total_steps, warm, sc["name"], sc["power"],
                                          min_ratio))
        self.ddp = None
        if self.info.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        amp = tc["amp"]
        if amp == "fp16" and self.device.type != "cuda":
            raise BinfaceError("train.amp=fp16 needs a CUDA device; use bf16 on CPU")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

        self.step = 0
        self.epoch = 0
        self.micro_in_epoch = 0
        self.best: dict = {"accuracy": -1.0, "step": None, "results": {}}
        self.history: list[dict] = []
        self.packs = None
        if resume:
            self._resume()

    # ------------------------------------------------------------------ setup helpers
    def _check_output(self, resume: bool, overwrite: bool) -> None:
        last = self.out / "last.pt"
        if resume:
            if not last.is_file():
                raise BinfaceError(f"--resume: no checkpoint {last} to resume from")
        elif last.exists() and not overwrite:
            raise BinfaceError(f"{self.out} already holds a run ({last.name}); use --resume to "
                               "continue it, --overwrite to replace it, or another output=")
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not resume:
                for f in ("log.jsonl", "best.pt", "last.pt"):
                    (self.out / f).unlink(missing_ok=True)

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _optimizer(self) -> torch.optim.Optimizer:
        oc = self.cfg["optim"]
        name = oc["name"]
        if name == "auto":
            name = "adam" if self.family == "binary" else "sgd"
        self.optim_name = name
        lr = oc["lr"]
        if lr == "auto":
            lr = 0.1 * self.global_batch * self.cfg["train"]["grad_accum"] / 1024 \
                if name == "sgd" else 1e-3
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += list(self.head.parameters())
        if self.distiller is not None:
            params += [p for p in self.distiller.proj.parameters()]
        wd = oc["weight_decay"]
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=oc["momentum"], weight_decay=wd)
        if name == "adamw":
            return torch.optim.AdamW(params, lr=lr, betas=tuple(oc["betas"]), weight_decay=wd)
        return torch.optim.Adam(params, lr=lr, betas=tuple(oc["betas"]), weight_decay=wd)

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        head_state = {k: v.detach().cpu() for k, v in self.head.state_dict().items()}
        head_state["weight"] = D.gather_rows(self.head.weight.detach()).cpu()
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model_name,
            "model_kwargs": dict(self.cfg["model_kwargs"]),
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
        state = self._state()  # collective under DDP: every rank takes part
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
        self.history.append(record)
        if self.info.main:
            with open(self.out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if self._tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "step":
                        self._tb.add_scalar(k, v, record["step"])

    def _train_step(self, batches) -> tuple[float, dict]:
        tc = self.cfg["train"]
        net = self.ddp or self.model
        self.model.train()
        self.head.train()
        if self.distiller is not None:
            self.distiller.train()
        if self.stage1_steps:
            set_kernel_quantization(self.model, self.step >= self.stage1_steps)
        self.opt.zero_grad(set_to_none=True)
        total, parts = 0.0, {}
        accum = tc["grad_accum"]
        for micro in range(accum):
            x, y = next(batches)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device)
            if tc["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            sync = (self.ddp.no_sync() if self.ddp is not None and micro < accum - 1
                    else nullcontext())
            autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                        if self.amp_dtype is not None else nullcontext())
            with sync:
                with autocast:
                    emb = net(x)
                emb = emb.float().reshape(x.shape[0], -1)
                loss = self.head(emb, y)
                if self.distiller is not None:
                    extra, logged = self.distiller(emb, x, y, self.step, self.total_steps)
                    loss = loss + extra
                    for k, v in logged.items():
                        parts[k] = parts.get(k, 0.0) + v / accum
                if not torch.isfinite(loss):
                    return float(loss.detach()), parts
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += float(loss.detach()) / accum
        if self.scaler:
            self.scaler.unscale_(self.opt)
        if tc["grad_clip"]:
            params = [p for g in self.opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        apply_weight_clip(self.model)
        return total, parts

    def fit(self) -> dict:
        """Train until ``stop_step``; returns the best verification results and paths."""
        tc = self.cfg["train"]
        self._tb = None
        if self.info.main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # tensorboard not installed: JSON lines only
                self._tb = None
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        batches = self._batches()
        val_every = tc["val_every"] or self.steps_per_epoch
        ckpt_every = tc["checkpoint_every"] or self.steps_per_epoch
        bar = progress_bar(total=self.stop_step, initial=self.step, disable=not self.progress,
                           desc=f"train {self.model_name}", unit="step", dynamic_ncols=True)
        images_per_step = self.global_batch * tc["grad_accum"]
        t0, seen = time.perf_counter(), 0
        try:
            while self.step < self.stop_step:
                lr = self.opt.param_groups[0]["lr"]
                loss, parts = self._train_step(batches)
                if not math.isfinite(loss):
                    kept = self.out / "last.pt"
                    where = (f"the last good checkpoint {kept} is kept" if kept.exists()
                             else "no checkpoint had been written yet")
                    raise TrainingError(
                        f"loss is {loss} at step {self.step + 1} (epoch {self.epoch}): training "
                        f"stopped; {where}. Lower optim.lr or set train.grad_clip")
                self.step += 1
                seen += images_per_step
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
                if self.step % tc["log_every"] == 0 or self.step == self.stop_step:
                    self._log({"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr,
                               "images_per_s": rate, **parts})
                if self.step % val_every == 0 or self.step == self.stop_step:
                    results = self.validate()
                    if results:
                        mean = float(np.mean([r["accuracy"] for r in results.values()]))
                        self._log({"step": self.step, "val": results, "val_mean": mean})
                        if mean > self.best["accuracy"]:
                            self.best = {"accuracy": mean, "step": self.step, "results": results}
                            self.save("best.pt")
                if self.step % ckpt_every == 0 or self.step == self.stop_step:
                    self.save("last.pt")
        finally:
            bar.close()
            if self._tb is not None:
                self._tb.close()
        if self.stage1_steps:
            set_kernel_quantization(self.model, True)
        summary = {"model": self.model_name, "steps": self.step, "epochs": self.epoch,
                   "output": str(self.out), "best": self.best,
                   "last_checkpoint": str(self.out / "last.pt")}
        if self.info.main and self.best["step"] is not None:
            summary["best_checkpoint"] = str(self.out / "best.pt")
        return summary
