"""``binface train CONFIG.yaml [key=value ...]`` (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a face model with a margin head (ArcFace recipe)",
        description="Train with the defaults, updated by CONFIG.yaml and key=value overrides "
        "(dotted keys: optim.lr=0.02 data.train=/data/train.rec; --list-keys shows them all, "
        "docs/training.md explains the recipe). Run the same command under "
        "`torchrun --nproc_per_node K` for DDP with sharded Partial FC.")
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    p.add_argument("--resume", action="store_true", help="continue the run in `output`")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run in `output` (its checkpoints are deleted)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("--list-keys", action="store_true",
                   help="print every config key with its type, default and help, and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from binface.train.config import dump_config, list_keys, load_config

    if args.list_keys:
        print(list_keys(), end="")
        return 0
    config, overrides = None, list(args.args)
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    cfg = load_config(config, overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from binface.train.loop import Trainer

    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
    summary = trainer.fit()
    if trainer.info.main:
        print(json.dumps(summary, indent=2))
    return 0
