"""From a photo to an identity: face detection, 5-point alignment, verify / enroll /
identify (the ``detect`` extra: ``pip install 'binface[detect]'``).

- ``get_detector()`` / ``MtcnnDetector``: faces with a box, a score and five landmarks
  in ArcFace order (``detect_faces(image)`` for one call);
- ``align_face(image, landmarks)``: the Umeyama similarity onto the ArcFace 112x112
  template and the crop (numpy + Pillow; no extra needed);
- ``load_embedder(model, runtime)``: a zoo name, checkpoint, ``.bfp`` or ``.onnx`` that
  embeds aligned crops as ``binface eval`` does (flip test, unit vectors);
- ``FacePipeline``, ``verify_images``, ``pack_threshold``, ``enroll``, ``identify``,
  ``run_frames``: the steps the ``binface detect / align / verify / enroll / identify``
  commands are made of.

Importing this package loads neither torch nor ONNX Runtime; docs/face_pipeline.md has
the detector choice, the landmark order, the template and the thresholds.
"""

from __future__ import annotations

import numpy as np

from binface.lazy import lazy_exports

_API = {
    "ARCFACE_TEMPLATE": "binface.face.align",
    "align_face": "binface.face.align",
    "umeyama": "binface.face.align",
    "warp_image": "binface.face.align",
    "apply_transform": "binface.face.align",
    "Detector": "binface.face.detector",
    "Face": "binface.face.detector",
    "NoFaceError": "binface.face.detector",
    "LANDMARK_NAMES": "binface.face.detector",
    "DETECTORS": "binface.face.detector",
    "get_detector": "binface.face.detector",
    "canonical_order": "binface.face.detector",
    "MtcnnDetector": "binface.face.mtcnn",
    "Embedder": "binface.face.embed",
    "load_embedder": "binface.face.embed",
    "Gallery": "binface.face.gallery",
    "load_gallery": "binface.face.gallery",
    "identify": "binface.face.gallery",
    "mean_template": "binface.face.gallery",
    "FacePipeline": "binface.face.pipeline",
    "verify_images": "binface.face.pipeline",
    "pack_threshold": "binface.face.pipeline",
    "enroll": "binface.face.pipeline",
    "run_frames": "binface.face.pipeline",
    "read_image": "binface.face.images",
    "iter_frames": "binface.face.images",
}

__all__ = sorted([*_API, "detect_faces"])

__getattr__, __dir__ = lazy_exports(__name__, _API, globals())


def detect_faces(image, detector=None) -> list:
    """Faces (largest first) in an image: a path or a (H, W, 3) uint8 RGB array. Builds
    the default MTCNN detector unless one is given."""
    from binface.face.detector import get_detector
    from binface.face.images import read_image

    img = image if isinstance(image, np.ndarray) else read_image(image)
    return (detector or get_detector()).detect(img)
