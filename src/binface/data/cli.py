"""``binface data`` sub-commands: pack, pairs, inspect, synth."""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from pathlib import Path

from binface.cli_args import positive_int
from binface.data.files import OVERWRITE_FLAG, check_outputs
from binface.errors import BinfaceError


def jpeg_quality(text: str) -> int:
    """An argparse type: a JPEG quality in Pillow's range 1..100, or a one-line error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a JPEG quality in 1..100, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """An argparse type: a seed in 0..2**63-1, or a one-line error."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 1 << 63:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..2**63-1, got {text!r}")
    return value


def _cmd_pack(args: argparse.Namespace) -> int:
    from binface.data.folder import pack_folder
    from binface.data.recordio import rec_paths

    rec, idx = rec_paths(args.out_prefix)
    check_outputs([rec, idx, rec.parent / "property"], [args.folder], args.overwrite)
    align = getattr(args, "align", False)
    load = args.aligner(quality=args.quality) if align else None
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _one_line_warning
        res = pack_folder(args.folder, args.out_prefix, quality=args.quality,
                          skip_bad=args.skip_bad, progress=not args.quiet, load=load)
    prefix = Path(args.out_prefix)
    done = (f"aligned {res.resized} photo(s) to the 112x112 template" if align else
            f"resized {res.resized} image(s) to 112x112")
    print(f"wrote {prefix}.rec/.idx and {prefix.parent / 'property'}: {res.images} images, "
          f"{res.classes} classes; {done}"
          + (f"; skipped {res.skipped} bad image(s)" if res.skipped else ""))
    return 0


def _cmd_pairs(args: argparse.Namespace) -> int:
    from binface.data.folder import pairs_pack

    check_outputs([args.out], [args.folder, args.pairs_file], args.overwrite)
    res = pairs_pack(args.folder, args.pairs_file, args.out, quality=args.quality,
                     progress=not args.quiet)
    print(f"wrote {args.out}: {res.images // 2} pairs of {res.classes} identities; "
          f"resized {res.resized} image(s) to 112x112")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from binface.data.recordio import rec_paths
    from binface.data.summary import format_summary, inspect_file

    path = Path(args.file)
    sheet = None if args.no_sheet else (args.sheet or path.with_name(path.name + ".png"))
    if sheet is not None:
        inputs = [path, *rec_paths(path)] if path.suffix in (".rec", ".idx") else [path]
        try:
            check_outputs([sheet], inputs, args.overwrite)
        except BinfaceError as exc:
            if "already exists" in str(exc):
                raise BinfaceError(f"{exc} (or --no-sheet)") from None
            raise
    info = inspect_file(path, sheet, progress=not args.quiet)
    print(json.dumps(info, indent=2) if args.json else format_summary(info))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from binface.data.synth import generate, identity_sheet
    from binface.data.synth.generate import output_files

    outputs = output_files(args.out_dir, args.pairs)
    check_outputs(outputs + ([Path(args.contact_sheet)] if args.contact_sheet else []),
                  overwrite=args.overwrite)
    res = generate(args.out_dir, identities=args.identities,
                   images_per_identity=args.images_per_identity, seed=args.seed,
                   difficulty=args.difficulty, pairs=args.pairs, workers=args.workers,
                   progress=not args.quiet)
    out = Path(args.out_dir)
    print(f"wrote {out}/train.rec/.idx + property: {res.train_images} images of "
          f"{res.identities} identities")
    for name, n in res.packs.items():
        print(f"wrote {out / name}: {n} pairs")
    print(f"{res.images} images in {res.seconds:.1f} s ({res.images / res.seconds:.0f} images/s)")
    if args.contact_sheet:
        path = identity_sheet(args.contact_sheet, seed=args.seed, difficulty=args.difficulty)
        print(f"wrote {path}")
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)


def register(sub: argparse._SubParsersAction, aligner: Callable | None = None) -> None:
    """Add the ``data`` command and its sub-commands to the top-level parser.

    ``aligner(quality=Q)``, when given, returns a function ``path -> (JPEG bytes, True)``
    that detects and aligns a raw photo: it enables ``data pack --align``. It is passed
    in (by ``binface.cli``), not imported, because the face pipeline reads images with
    this package's decoders.
    """
    p = sub.add_parser(
        "data", help="read, write, inspect and synthesise face data",
        description="insightface-format data without mxnet: RecordIO training sets "
        "(.rec/.idx), verification packs (.bin), image folders and a synthetic benchmark.",
    )
    p.set_defaults(func=lambda args: p.print_help() or 0)
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND",
                            parser_class=type(p))

    q = dsub.add_parser("pack", help="image folder (one subfolder per identity) -> .rec/.idx",
                        description="Pack an aligned image folder with one subfolder per "
                        "identity into OUT_PREFIX.rec/.idx and a property file. Images that "
                        "are not 112x112 are resized (and counted).")
    q.add_argument("folder", help="folder of identity subfolders")
    q.add_argument("out_prefix", help="output prefix, e.g. out/train")
    q.add_argument("--quality", type=jpeg_quality, default=95,
                   help="JPEG quality of re-encoded images (1..100)")
    q.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images with a warning instead of stopping")
    q.add_argument(OVERWRITE_FLAG, action="store_true",
                   help="replace OUT_PREFIX.rec/.idx and property if they exist")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    if aligner is not None:
        q.add_argument("--align", action="store_true",
                       help="the folder holds raw photos: detect the largest face of each and "
                       "align it to the ArcFace 112x112 template (needs the detect extra: "
                       "pip install 'binface[detect]'); with --skip-bad, photos without a "
                       "face are skipped")
    q.set_defaults(func=_cmd_pack, aligner=aligner)

    q = dsub.add_parser("pairs", help="image folder + LFW pairs.txt -> verification pack",
                        description="Build a verification pack (.bin) from an aligned folder "
                        "(FOLDER/name/name_0001.jpg) and an LFW-style pairs file "
                        "('name n1 n2' for a genuine pair, 'name1 n1 name2 n2' otherwise).")
    q.add_argument("folder")
    q.add_argument("pairs_file", metavar="PAIRS.txt")
    q.add_argument("out", metavar="OUT.bin")
    q.add_argument("--quality", type=jpeg_quality, default=95,
                   help="JPEG quality of re-encoded images (1..100)")
    q.add_argument(OVERWRITE_FLAG, action="store_true", help="replace OUT.bin if it exists")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_pairs)

    q = dsub.add_parser("inspect", help="counts and a contact sheet of a .rec or .bin",
                        description="Print images, classes and images per class of a .rec, "
                        "or pairs, labels per fold and sha256 of a .bin, and write a PNG "
                        "contact sheet of samples (FILE.png unless --sheet/--no-sheet).")
    q.add_argument("file", help="a .rec (with its .idx) or a verification .bin")
    q.add_argument("--sheet", metavar="PNG", help="where to write the contact sheet")
    q.add_argument("--no-sheet", action="store_true", help="do not write a contact sheet")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.add_argument(OVERWRITE_FLAG, action="store_true",
                   help="replace the contact sheet if it exists")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_inspect)

    q = dsub.add_parser("synth", help="write the synthetic face-identity benchmark",
                        description="Render synthetic identities into OUT_DIR/train.rec/.idx "
                        "+ property and three verification packs on disjoint identities: "
                        "synth_lfw.bin (6000 pairs), synth_cfp_fp.bin (7000, frontal vs "
                        "profile) and synth_agedb_30.bin (6000, large age gap). The same "
                        "seed gives byte-identical files.")
    q.add_argument("out_dir")
    q.add_argument("--identities", type=positive_int, default=1000, help="training identities "
                   "(default 1000)")
    q.add_argument("--images-per-identity", type=positive_int, default=20,
                   help="training images per identity (default 20)")
    q.add_argument("--seed", type=seed_int, default=0, help="master seed (default 0)")
    q.add_argument("--difficulty", type=float, default=1.0,
                   help="nuisance strength: 0 clean, 1 calibrated default, up to 3")
    q.add_argument("--pairs", type=int, default=None,
                   help="pairs per pack, a multiple of 20 (default: 6000/7000/6000 as the "
                   "real packs)")
    q.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes (default: CPU count; output does not depend on it)")
    q.add_argument("--contact-sheet", metavar="PNG", help="also write a PNG of sample identities")
    q.add_argument(OVERWRITE_FLAG, action="store_true",
                   help="replace files of an earlier benchmark in OUT_DIR")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_synth)
