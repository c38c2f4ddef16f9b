"""``binface run MODEL.bfp IMAGES...``: embeddings from the packed engine, without torch.

What a board needs (numpy, numba, and Pillow to read image files): the packed engine
embeds aligned face crops at the model's input size, preprocessed as in training and
evaluation ((x - 127.5) / 127.5, NCHW float32). Prints one line per face (its file and
the embedding's norm), the cosine similarity of every pair when there are at most eight
faces, and with ``--out`` writes the L2-normalised embeddings as a float32 ``.npy``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from binface.cli_args import positive_int
from binface.errors import BinfaceError
from binface.fileio import OVERWRITE_FLAG, check_outputs, write_with

MAX_COSINES = 8


def read_faces(paths: list[str], size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """uint8 (N, H, W, 3) faces and a name per face from image files or ``.npy`` arrays
    of such faces (or one (H, W, 3) face); a missing, unreadable or wrongly sized input
    is a one-line error naming it."""
    faces, names = [], []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise BinfaceError(f"{p}: no such file")
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise BinfaceError(f"{p}: not a readable .npy array ({exc})") from None
            if arr.ndim == 3:
                arr = arr[None]
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
                raise BinfaceError(f"{p}: expected uint8 faces of shape (N, H, W, 3), got "
                                   f"{arr.dtype} {arr.shape}")
            faces += list(arr)
            names += [f"{p}[{i}]" for i in range(len(arr))] if len(arr) > 1 else [p]
        else:
            from binface.data.images import decode_image

            faces.append(decode_image(path.read_bytes(), p))
            names.append(p)
    for face, name in zip(faces, names, strict=True):
        if face.shape[:2] != tuple(size):
            raise BinfaceError(f"{name}: a {face.shape[1]}x{face.shape[0]} image; the model "
                               f"takes aligned {size[1]}x{size[0]} faces (`binface align` "
                               "makes them from photos)")
    return np.stack(faces), names


def _cmd_run(args: argparse.Namespace) -> int:
    from binface.runtime.engine import load_packed

    model = Path(args.model)
    if model.suffix.lower() != ".bfp":
        raise BinfaceError(f"{args.model}: binface run takes a packed model (.bfp; "
                           "`binface export MODEL --format packed` writes one)")
    if not model.is_file():
        raise BinfaceError(f"{args.model}: no such file")
    if args.out and not args.out.endswith(".npy"):
        raise BinfaceError(f"--out {args.out}: the embeddings are written as a .npy file")
    if args.out:
        check_outputs([args.out], inputs=[args.model, *args.images], overwrite=args.overwrite)
    engine = load_packed(model, threads=args.threads)
    size = tuple(engine.input_shape[-2:])
    faces, names = read_faces(args.images, size)
    x = (faces.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5
    emb = np.asarray(engine.run(x), dtype=np.float32).reshape(len(faces), -1)
    norms = np.linalg.norm(emb, axis=1)
    if not np.all(np.isfinite(emb)):
        raise BinfaceError(f"{args.model}: the model gave a non-finite embedding")
    unit = emb / np.maximum(norms[:, None], 1e-12)
    cos = unit @ unit.T if len(names) <= MAX_COSINES else None  # N x N: only when printed
    if args.out:
        write_with(Path(args.out), lambda tmp: np.save(tmp, unit, allow_pickle=False))
    if args.json:
        print(json.dumps({"model": str(model), "faces": names, "norms": norms.tolist(),
                          "cosine": None if cos is None else cos.tolist(),
                          "out": args.out}, indent=2))
        return 0
    print(f"{model.name}: {len(names)} face(s), {emb.shape[1]}-D embeddings, packed engine")
    for name, n in zip(names, norms, strict=True):
        print(f"  {name}: norm {n:.4f}")
    if cos is not None and len(names) > 1:
        print("cosine similarity:")
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                print(f"  {names[i]} ~ {names[j]}: {cos[i, j]:+.4f}")
    if args.out:
        print(f"wrote {args.out}: ({len(names)}, {emb.shape[1]}) float32, L2-normalised")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="embed aligned faces with a packed .bfp model (numpy + numba, no torch)",
        description="Embed aligned face crops (image files, or .npy arrays of uint8 faces) with "
        "a packed binary model in binface's own engine. Needs numpy, numba and Pillow only: "
        "what a board installs (README, 'On a board').")
    p.add_argument("model", help="a .bfp file (binface export MODEL --format packed)")
    p.add_argument("images", nargs="+", help="aligned faces at the model's input size: image "
                   "files or .npy arrays of shape (N, H, W, 3), uint8")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="threads, working inside each layer (default 1)")
    p.add_argument("--out", metavar="FILE.npy", help="write the L2-normalised embeddings")
    p.add_argument(OVERWRITE_FLAG, action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_run)
