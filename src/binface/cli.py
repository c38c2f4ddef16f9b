"""The ``binface`` command: one sub-command per job.

Each job lives with its package; this file only wires the sub-commands and turns
user errors into one line on stderr (exit status 2, or the error's own
``exit_status``: 1 for "no face found") instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from binface import __version__
from binface.cli_args import parse_size
from binface.errors import BinfaceError


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ---------------------------------------------------------------- models
def _cmd_models(args: argparse.Namespace) -> int:
    from binface.models import list_models, model_info

    names = list_models(args.family)
    if args.json:
        rows = [
            {"name": n, "family": model_info(n).family, "description": model_info(n).description}
            for n in names
        ]
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(n) for n in names) if names else 4
    print(f"{'model':<{width}}  family  description")
    for n in names:
        info = model_info(n)
        print(f"{n:<{width}}  {info.family:<6}  {info.description}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo", description="List every registered "
                       "model with its family (cnn / hybrid / binary) and a one-line description.")
    p.add_argument("--family", choices=["cnn", "hybrid", "binary"], help="only this family")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_models)


# ---------------------------------------------------------------- profile
def _cmd_profile(args: argparse.Namespace) -> int:
    from binface.profile import cli as profile_cli

    return profile_cli.run(args)


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="count MACs, parameters and memory (larq convention)",
        description="Count MACs by precision, parameters by precision and weight memory of a "
        "model by walking its real forward pass, in the larq convention of the seed's Table 2. "
        "With --table, reproduce a table of the seed paper with the deviation per column.",
    )
    p.add_argument("name", nargs="?", help="registered model name (see `binface models`) or a "
                   "checkpoint (.pt); a train.qat=int8 checkpoint counts as int8")
    p.add_argument("--table", choices=["binary", "float"], help="print a seed table instead")
    p.add_argument("--backbone-only", action="store_true", help="count the backbone alone "
                   "(what the seed's tables count)")
    p.add_argument("--per-layer", action="store_true", help="print every counted layer")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--input-size", type=parse_size, default=(112, 112), metavar="H[xW]",
                   help="input image size (default 112)")
    p.add_argument("--precision", choices=["float", "int8"], default="float",
                   help="int8: count the float conv and dense layers as int8 weights and "
                   "inputs, as `binface export --int8` runs them (default float)")
    p.set_defaults(func=_cmd_profile)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="binface",
        description="Face recognition on embedded hardware: a model zoo of lightweight CNNs, "
        "efficient hybrids and binary networks, with exact complexity accounting.",
    )
    parser.add_argument("--version", action="version", version=f"binface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_models(sub)
    _add_profile(sub)
    from binface.compare import register as _add_compare
    from binface.data.cli import register as _add_data
    from binface.demo import register as _add_demo
    from binface.eval.cli import register as _add_eval
    from binface.face.cli import pack_aligner
    from binface.face.cli import register as _add_face
    from binface.privacy.cli import register as _add_privacy
    from binface.runtime.cli import register as _add_runtime
    from binface.train.cli import register as _add_train

    _add_demo(sub)
    _add_data(sub, aligner=pack_aligner)
    _add_train(sub)
    _add_eval(sub)
    _add_runtime(sub)
    _add_compare(sub)
    _add_privacy(sub)
    _add_face(sub)
    return parser


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error.

    A DataLoader worker's error comes back re-raised with the worker's traceback in
    its message; its last line holds the original "module.Error: message".
    """
    text = str(exc).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1].strip()
    head, sep, rest = last.partition(": ")
    return rest if sep and "Error" in head.rsplit(".", 1)[-1] else last


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except BinfaceError as exc:
        print(f"binface {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
    except KeyboardInterrupt:
        print(f"binface {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
