"""``binface detect / align / verify / enroll / identify``: the photo-to-identity commands.

Each is a thin layer over :mod:`binface.face`. Errors are one line; an image in which no
face is found is reported as "no face found in X" and the command exits with status 1.
The ``detect`` extra (``pip install 'binface[detect]'``) provides the detector's weights;
without it these commands say so in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from binface.cli_args import positive_int
from binface.errors import BinfaceError
from binface.fileio import OVERWRITE_FLAG, check_outputs

RUNTIME_CHOICES = ("auto", "torch", "onnx", "packed")


def _fmt_pt(p) -> str:
    return f"({p[0]:.1f}, {p[1]:.1f})"


def _no_face(command: str, where: str) -> None:
    print(f"binface {command}: no face found in {where}", file=sys.stderr)


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def _detector(args: argparse.Namespace):
    from binface.face.detector import get_detector

    return get_detector("mtcnn", min_face=args.min_face, threads=args.threads)


# ---------------------------------------------------------------- detect
def cmd_detect(args: argparse.Namespace) -> int:
    from binface.face.detector import LANDMARK_NAMES
    from binface.face.images import read_image

    det = _detector(args)
    rows, missing = [], 0
    for path in args.images:
        img = read_image(path)
        faces = det.detect(img)
        rows.append({"image": str(path), "width": int(img.shape[1]),
                     "height": int(img.shape[0]), "faces": [f.to_dict() for f in faces]})
        if not faces:
            missing += 1
    if args.json:
        print(json.dumps({"detector": det.describe(), "order": list(LANDMARK_NAMES),
                          "images": rows}, indent=2))
    else:
        derived = sorted({d for r in rows for f in r["faces"] for d in f["derived"]})
        print(f"detector {det.name}; landmarks in image pixels, left/right as seen in the image"
              + (f"; derived, not detected: {', '.join(derived)}" if derived else
                 "; all five given by the detector"))
        for r in rows:
            n = len(r["faces"])
            print(f"{r['image']}: {n} face{'s' if n != 1 else ''} ({r['width']}x{r['height']})")
            for i, f in enumerate(r["faces"]):
                b = f["box"]
                print(f"  face {i}: box ({b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}, {b[3]:.1f}) "
                      f"score {f['score']:.3f}")
                print("    " + "  ".join(f"{k} {_fmt_pt(v)}" for k, v in f["landmarks"].items()))
    for r in rows:
        if not r["faces"]:
            _no_face("detect", r["image"])
    return 1 if missing else 0


# ---------------------------------------------------------------- align
def cmd_align(args: argparse.Namespace) -> int:
    from PIL import Image

    from binface.face.align import align_face
    from binface.face.images import read_image
    from binface.fileio import write_with

    det = _detector(args)
    out = Path(args.out)
    plans, missing = [], []
    for path in args.images:
        img = read_image(path)
        faces = det.detect(img)
        if not faces:
            missing.append(str(path))
            continue
        chosen = faces if args.all else faces[:1]
        stem = Path(path).stem
        for i, f in enumerate(chosen):
            name = f"{stem}_{i}.png" if args.all else f"{stem}.png"
            plans.append((out / name, img, f))
    check_outputs([p for p, _, _ in plans], inputs=args.images, overwrite=args.overwrite)
    for target, img, f in plans:
        crop, _ = align_face(img, f.landmarks, args.size)
        write_with(target, lambda tmp, c=crop: Image.fromarray(c).save(tmp, format="PNG"))
    if plans:
        print(f"wrote {len(plans)} aligned {args.size}x{args.size} crop"
              f"{'s' if len(plans) != 1 else ''} to {out}")
    for where in missing:
        _no_face("align", where)
    return 1 if missing else 0


# ---------------------------------------------------------------- shared
def _pipeline(args: argparse.Namespace, model: str):
    from binface.face.pipeline import FacePipeline

    return FacePipeline.create(model, runtime=args.runtime, threads=args.threads,
                               min_face=args.min_face, flip=not args.no_flip)


def _threshold(args: argparse.Namespace, embedder) -> tuple[float | None, dict]:
    if args.far is not None:
        from binface.face.pipeline import pack_threshold

        if not args.pack:
            raise BinfaceError("--far needs --pack PACK.bin, the verification pack whose "
                               "impostor pairs set the threshold")
        info = pack_threshold(embedder, args.pack, args.far, args.max_pairs,
                              flip=not args.no_flip)
        return info["threshold"], info
    if args.pack:
        raise BinfaceError("--pack is used with --far F (the false accept rate to pick the "
                           "threshold at)")
    return args.threshold, ({"threshold": args.threshold, "source": "--threshold"}
                            if args.threshold is not None else {})


def _describe_threshold(info: dict) -> str:
    if "far" in info:
        return (f"threshold {info['threshold']:.4f} at FAR {info['far']:g} on {info['pack']} "
                f"({info['impostor_pairs']} impostor pairs; TAR there {info['tar']:.4f})")
    return f"threshold {info['threshold']:.4f} ({info.get('source', 'given')})"


def _model_note(emb) -> str:
    trained = emb.sha256 is not None
    return (f"{emb.name} ({emb.family}, {emb.runtime} runtime, {emb.size}-D"
            + ("" if trained else "; a zoo name: random weights") + ")")


# ---------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    from binface.face.pipeline import verify_images

    if args.threshold is not None and args.far is not None:
        raise BinfaceError("give --threshold T or --far F --pack PACK, not both")
    pipe = _pipeline(args, args.model)
    res = verify_images(pipe, args.a, args.b)
    thr, info = _threshold(args, pipe.embedder)
    res["same"] = None if thr is None else bool(res["cosine"] > thr)
    res.update(threshold=thr, threshold_info=info, model=pipe.embedder.identity,
               images=[str(args.a), str(args.b)], flip=pipe.flip)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"cosine {res['cosine']:.4f}: {args.a} vs {args.b}, largest faces, "
          f"{_model_note(pipe.embedder)}{', flip test' if pipe.flip else ''}")
    if thr is None:
        print("decision: none (no threshold: give --threshold T, or --far F --pack PACK)")
    else:
        print(_describe_threshold(info))
        print(f"decision: {'same person' if res['same'] else 'different people'}")
    return 0


# ---------------------------------------------------------------- enroll
def cmd_enroll(args: argparse.Namespace) -> int:
    from binface.face.pipeline import enroll

    if args.threshold is not None and args.far is not None:
        raise BinfaceError("give --threshold T or --far F --pack PACK, not both")
    check_outputs([args.out], inputs=[args.folder], overwrite=args.overwrite)
    from binface.face.embed import require_weights

    require_weights(args.model)
    pipe = _pipeline(args, args.model)
    thr, info = _threshold(args, pipe.embedder)
    with _one_line_warnings():
        gallery = enroll(pipe, args.folder, skip_bad=not args.strict, threshold=thr,
                         threshold_info=info)
    gallery.save(args.out)
    print(f"enrolled {len(gallery.names)} identities ({int(gallery.counts.sum())} photos) with "
          f"{_model_note(pipe.embedder)} -> {args.out}")
    if thr is not None:
        print(_describe_threshold(info))
    return 0


# ---------------------------------------------------------------- identify
def _match_text(r: dict) -> str:
    best = r["matches"][0]
    head = (f"{r['identity']} {r['cosine']:.4f}" if r["identity"] != "unknown" else
            f"unknown (nearest {best['name']} {best['cosine']:.4f})")
    rest = r["matches"][1:]
    return head + (" | next: " + ", ".join(f"{m['name']} {m['cosine']:.4f}" for m in rest)
                   if rest else "")


def cmd_identify(args: argparse.Namespace) -> int:
    from binface.face.gallery import check_compatible, identify, load_gallery
    from binface.face.pipeline import run_frames

    if bool(args.images) == bool(args.video):
        raise BinfaceError("give IMAGE... or --video FILE_OR_FOLDER (one of them)")
    gallery = load_gallery(args.gallery)
    model = args.model or gallery.model.get("spec")
    if not model:
        raise BinfaceError(f"{args.gallery} does not say which model made it: give --model")
    thr = args.threshold if args.threshold is not None else gallery.threshold
    if thr is None:
        raise BinfaceError(f"no threshold: give --threshold T, or enroll {args.gallery} with "
                           "--threshold T or --far F --pack PACK")
    pipe = _pipeline(args, model)
    check_compatible(gallery, pipe.embedder.identity, str(args.gallery))
    if args.video:
        return _identify_frames(args, pipe, gallery, thr, run_frames)
    from binface.face.images import read_image

    rows, missing = [], []
    for path in args.images:
        img = read_image(path)
        faces = pipe.detector.detect(img)
        if not faces:
            missing.append(str(path))
            rows.append({"image": str(path), "faces": []})
            continue
        e = pipe.embedder.embed(pipe.crops(img, faces), flip=pipe.flip)
        res = identify(e, gallery, args.top_k, thr)
        for f, r in zip(faces, res, strict=True):
            r["box"] = [round(float(v), 1) for v in f.box]
        rows.append({"image": str(path), "faces": res})
    if args.json:
        print(json.dumps({"threshold": thr, "model": pipe.embedder.identity, "images": rows},
                         indent=2))
    else:
        print(f"gallery {args.gallery}: {len(gallery.names)} identities; threshold {thr:.4f}; "
              f"{_model_note(pipe.embedder)}")
        for r in rows:
            for i, f in enumerate(r["faces"]):
                print(f"{r['image']}: face {i}: {_match_text(f)}")
    for where in missing:
        _no_face("identify", where)
    return 1 if missing else 0


def _identify_frames(args, pipe, gallery, thr, run_frames) -> int:
    summary = None
    for item in run_frames(pipe, gallery, args.video, args.top_k, thr, args.max_frames):
        if item.get("summary"):
            summary = item
            break
        if args.json:
            print(json.dumps(item))
        else:
            faces = "; ".join(f"face {i}: {_match_text(f)}" for i, f in enumerate(item["faces"]))
            print(f"frame {item['frame']} ({item['name']}, {item['ms']:.1f} ms): "
                  f"{faces or 'no face'}")
    if summary is None:
        raise BinfaceError(f"{args.video}: no frames")
    if args.json:
        print(json.dumps(summary))
    else:
        ms = summary["ms_per_frame"]
        print(f"{summary['frames']} frames, {summary['faces']} faces in "
              f"{summary['seconds']:.2f} s: {summary['fps']:.1f} frames/s on "
              f"{summary['threads']} thread{'s' if summary['threads'] != 1 else ''} "
              f"(per frame: read {ms['read']:.1f} ms, detect {ms['detect']:.1f} ms, "
              f"align+embed+match {ms['embed']:.1f} ms; {summary['model']} in "
              f"{summary['runtime']})")
    return 0


# ---------------------------------------------------------------- data pack --align
def pack_aligner(quality: int = 95, min_face: int = 20
                 ) -> Callable[[Path], tuple[bytes, bool]]:
    """For ``binface data pack --align``: path -> (JPEG of the largest face's aligned crop,
    True). One detector serves every photo; no face is a one-line error."""
    from binface.data.images import encode_jpeg
    from binface.face.align import align_face
    from binface.face.detector import NoFaceError, get_detector
    from binface.face.images import read_image

    det = get_detector("mtcnn", min_face=min_face, threads=1)

    def load(path: Path) -> tuple[bytes, bool]:
        img = read_image(path)
        faces = det.detect(img)
        if not faces:
            raise NoFaceError(f"no face found in {path}")
        return encode_jpeg(align_face(img, faces[0].landmarks)[0], quality), True

    return load


# ---------------------------------------------------------------- parsers
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-face", type=positive_int, default=20, metavar="PX",
                   help="smallest face side searched for, in pixels (default 20; larger is "
                   "faster)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="threads of the detector and the model (default 1)")


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, metavar="MODEL",
                   help="zoo name (random weights), checkpoint (.pt), .bfp or .onnx")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                   help="where the model runs (default auto: the packed engine for binary "
                   "models, ONNX Runtime for float ones)")
    p.add_argument("--no-flip", action="store_true",
                   help="embed each crop once, without its mirror image")


def _threshold_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, metavar="T", help="cosine threshold")
    p.add_argument("--far", type=float, metavar="F",
                   help="pick the threshold at this false accept rate on --pack (e.g. 1e-3)")
    p.add_argument("--pack", metavar="PACK.bin", help="verification pack for --far")
    p.add_argument("--max-pairs", type=positive_int, default=None,
                   help="use a fold-balanced subset of the pack's pairs")


def register(sub: argparse._SubParsersAction) -> None:
    """Add detect, align, verify, enroll and identify to the top-level parser."""
    extra = "Needs the detect extra: pip install 'binface[detect]'."
    p = sub.add_parser("detect", help="find faces and their five landmarks in photos",
                       description="Detect faces (MTCNN) and print each one's box, score and "
                       "five landmarks in image pixels, in ArcFace order: the eye on the "
                       "image's left, the other eye, the nose tip, the mouth corner on the "
                       f"image's left, the other one. Exit status 1 if a photo has no face. "
                       f"{extra}")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print JSON")
    _common(p)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("align", help="aligned 112x112 face crops from photos",
                       description="Detect faces and warp each onto the ArcFace 112x112 "
                       "template (least-squares similarity of the five landmarks, as "
                       "insightface's norm_crop): the largest face of each photo as "
                       "DIR/NAME.png, or every face as DIR/NAME_I.png with --all (largest "
                       f"first). {extra}")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--all", action="store_true", help="every face, not only the largest")
    p.add_argument("--size", type=positive_int, default=112,
                   help="crop side in pixels (the template scaled; default 112)")
    p.add_argument(OVERWRITE_FLAG, action="store_true", help="replace existing crops")
    _common(p)
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("verify", help="are two photos of the same person?",
                       description="Detect, align and embed (flip test) the largest face of "
                       "each photo, print their cosine and, with --threshold or --far F "
                       f"--pack PACK (the threshold at that FAR on a verification pack), the "
                       f"decision. {extra}")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    _model_args(p)
    _threshold_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("enroll", help="a gallery from a folder of people's photos",
                       description="One subfolder per person, several photos each: the "
                       "largest face of each photo is embedded, and each person's template "
                       "is the renormalised mean of their unit embeddings. The gallery "
                       "(.npz) records the model and embedding size, and a threshold when "
                       f"given. Photos without a face are left out with a warning. {extra}")
    p.add_argument("folder", metavar="DIR")
    _model_args(p)
    p.add_argument("-o", "--out", required=True, metavar="GALLERY.npz")
    _threshold_args(p)
    p.add_argument("--strict", action="store_true",
                   help="stop at a photo without a face instead of leaving it out")
    p.add_argument(OVERWRITE_FLAG, action="store_true", help="replace an existing gallery")
    _common(p)
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("identify", help="who is in these photos, or in a video",
                       description="Every face of each photo (or of each frame of --video: "
                       "a video file, or a folder of frames) against a gallery: the top-k "
                       "identities with their cosines, 'unknown' at or below the threshold. "
                       "With --video it reports the frames per second achieved. The model "
                       f"is the gallery's unless --model is given. {extra}")
    p.add_argument("images", nargs="*", metavar="IMAGE")
    p.add_argument("--video", metavar="FILE_OR_DIR",
                   help="a video file (read with OpenCV) or a folder of frames")
    p.add_argument("--gallery", required=True, metavar="GALLERY.npz")
    _model_args(p, required=False)
    p.add_argument("--top-k", type=positive_int, default=1, help="identities listed per face")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="cosine threshold (default: the gallery's)")
    p.add_argument("--max-frames", type=positive_int, default=None,
                   help="stop after this many frames")
    p.add_argument("--json", action="store_true", help="print JSON (one line per frame "
                   "with --video)")
    _common(p)
    p.set_defaults(func=cmd_identify)


__all__ = ["pack_aligner", "register"]
