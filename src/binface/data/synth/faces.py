"""Synthetic face identities: sampled traits, per-image nuisance, a numpy renderer.

A head is a few ellipsoids (cranium, jaw, nose bridge and tip, ears, hair shell,
neck) ray-cast under yaw, pitch and roll with a depth test, so pose foreshortens
and hides parts of the face the way a real head does. Eyes, brows, mouth, marks,
facial hair, glasses and wrinkles are painted on the surface with soft distance
masks in head coordinates. The five landmarks are projected with the pose,
jittered like a detector's output, and a least-squares similarity maps them onto
the ArcFace template: every image is aligned the way insightface aligns photos.

Identity lives in the geometry and the fixed traits; everything a camera or a day
changes (pose, light, expression, background, blur, noise, JPEG, occlusion, age)
is drawn per image, so no single colour or statistic gives an identity away.
All per-pixel work is float32 numpy on one 112x112 grid (features only inside
their own bounding windows); PIL does blur, resampling and JPEG.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

SIZE = 112
TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
# Head space: u right, v down, w toward the camera, in pixels of a frontal aligned
# crop, origin at (56, 58) of the template image.
ORIGIN = np.array([56.0, 58.0])

_OY, _OX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
_GRID = np.stack([_OX.ravel(), _OY.ravel(), np.ones(SIZE * SIZE, np.float32)])  # (3, N)
_AX = np.arange(SIZE, dtype=np.float32)
_BASIS = np.stack([_GRID[0] ** 2, _GRID[1] ** 2, _GRID[0] * _GRID[1], *_GRID])  # (6, N)

# ids of the ray-cast ellipsoids
CRANIUM, JAW, NOSE, NOSE_TIP, EAR_L, EAR_R, HAIR, NECK = range(8)
N_OBJ = 8
BACKGROUND = N_OBJ

_SKIN_TONES = np.array(
    [[0.96, 0.80, 0.70], [0.90, 0.70, 0.57], [0.78, 0.56, 0.41], [0.60, 0.41, 0.28],
     [0.42, 0.27, 0.18], [0.28, 0.18, 0.12]], dtype=np.float32)
_HAIR_COLOURS = np.array(
    [[0.05, 0.045, 0.04], [0.16, 0.10, 0.06], [0.32, 0.20, 0.11], [0.52, 0.36, 0.20],
     [0.78, 0.64, 0.40], [0.55, 0.22, 0.08], [0.62, 0.60, 0.58]], dtype=np.float32)
_HAIR_P = [0.30, 0.24, 0.18, 0.10, 0.09, 0.05, 0.04]
_IRIS_COLOURS = np.array(
    [[0.20, 0.11, 0.05], [0.36, 0.22, 0.10], [0.45, 0.38, 0.18], [0.28, 0.44, 0.28],
     [0.30, 0.48, 0.70], [0.48, 0.54, 0.60]], dtype=np.float32)
_IRIS_P = [0.36, 0.22, 0.12, 0.09, 0.13, 0.08]
_FRAME_COLOURS = np.array(
    [[0.04, 0.04, 0.04], [0.30, 0.17, 0.08], [0.62, 0.62, 0.64], [0.72, 0.58, 0.25],
     [0.45, 0.08, 0.10], [0.10, 0.15, 0.40]], dtype=np.float32)
_GREY_HAIR = np.array([0.72, 0.71, 0.69], np.float32)
_SCLERA = np.array([0.86, 0.83, 0.80], np.float32)
_DARK = np.array([0.05, 0.04, 0.04], np.float32)
_MOUTH_IN = np.array([0.14, 0.05, 0.05], np.float32)
_TEETH = np.array([0.86, 0.84, 0.78], np.float32)
_MOLE = np.array([0.25, 0.14, 0.09], np.float32)
_BLUSH = np.array([0.80, 0.30, 0.30], np.float32)
_LENS = np.array([0.12, 0.12, 0.14], np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_NOISE = np.random.default_rng(20240611).standard_normal(1 << 18, dtype=np.float32)


def _palette(palette: np.ndarray, t: float) -> np.ndarray:
    x = min(max(t, 0.0), 1.0) * (len(palette) - 1)
    i = min(int(x), len(palette) - 2)
    return palette[i] * (1 - (x - i)) + palette[i + 1] * (x - i)


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


# ============================================================================ identity
@dataclass
class Identity:
    """Everything that makes one synthetic person recognisable (floats unless noted)."""

    masc: float
    age0: float
    eye_dx: float  # half the distance between the eyes
    eye_v: float
    nose_v: float  # nose tip
    mouth_v: float
    mouth_w: float  # half width
    cran_r: tuple[float, float, float]
    cran_v: float
    jaw_r: tuple[float, float, float]
    jaw_v: float
    chin_w: float  # how far the chin comes forward
    bridge_w: float
    bridge_h: float
    tip_r: tuple[float, float, float]
    nose_out: float  # protrusion of the tip
    nostril_sep: float
    nostril_size: float
    nostril_dark: float
    ear_v: float
    ear_r: tuple[float, float, float]
    ear_angle: float
    eye_w: float
    eye_up: float
    eye_lo: float
    eye_tilt: float
    eye_peak: float
    iris_r: float
    iris_col: np.ndarray
    socket: float
    lid_crease: float
    brow_off: float
    brow_thick: float
    brow_arch: float
    brow_len: float
    brow_angle: float
    brow_gap: float
    brow_density: float
    lip_up: float
    lip_lo: float
    cupid: float
    mouth_curve: float
    lip_col: np.ndarray
    skin: np.ndarray
    skin_waves: list  # [freq, angle, phase, amplitude] per wave
    blush: float
    freckles: float
    freckle_tex: np.ndarray  # (32, 32) bool
    moles: list  # [u, v, radius, darkness]
    age_spots: list  # [u, v, radius, age it appears]
    wrinkle_k: float
    hair_col: np.ndarray
    hairline: float
    recession: float
    widow: float
    parting: float
    bangs: float
    hair_vol: float
    hair_len: float
    hair_freq: float
    bald_rate: float
    grey_onset: float
    grey_span: float
    beard: tuple[float, float, float, float]  # moustache, chin, cheeks, stubble density
    glasses: bool
    glass_p: float
    glass_w: float
    glass_h: float
    glass_t: float
    glass_col: np.ndarray
    glass_tint: float


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw the traits of one person."""
    n, u = rng.normal, rng.uniform

    def ln(mean: float, sd: float) -> float:
        return mean * math.exp(n(0, sd))

    masc = float(rng.random() < 0.5)
    eye_v = -6.4 + n(0, 1.0)
    nose_v = ln(13.7, 0.09)
    mouth_v = max(ln(34.3, 0.06), nose_v + 13)
    ru = ln(45.0, 0.05)
    chin = mouth_v + u(13, 21)
    jaw_rv = u(26, 36)
    skin = _palette(_SKIN_TONES, rng.beta(1.4, 1.6)) + n(0, 0.025, 3).astype(np.float32)
    skin = np.clip(skin, 0.05, 1).astype(np.float32)
    hair_col = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_P)]
    hair_col = np.clip(hair_col * np.exp(n(0, 0.12, 3)), 0.02, 1).astype(np.float32)
    iris_col = _IRIS_COLOURS[rng.choice(len(_IRIS_COLOURS), p=_IRIS_P)]
    iris_col = np.clip(iris_col * np.exp(n(0, 0.1, 3)), 0, 1).astype(np.float32)
    lip_col = (skin * u(0.55, 0.8) + np.array([0.55, 0.12, 0.14]) * u(0.15, 0.45))
    waves = [[u(0.05, 0.22), u(0, math.pi), u(0, 2 * math.pi), u(0.01, 0.05)] for _ in range(3)]
    moles = [[u(-30, 30), u(-28, 46), u(0.6, 1.7), u(0.3, 0.7)] for _ in range(rng.poisson(1.3))]
    spots = [[u(-34, 34), u(-36, 40), u(0.8, 2.2), u(45, 95)] for _ in range(10)]
    lengths = [eye_v - 4, nose_v + 8, 62.0]  # short, medium, long
    hair_len = float(rng.choice(lengths, p=[0.70, 0.22, 0.08] if masc else [0.12, 0.30, 0.58]))
    beard = (0.0, 0.0, 0.0, 0.0)
    if masc and rng.random() < 0.42:
        kind = rng.choice(4)  # moustache, goatee, full, stubble
        beard = tuple(u(0.45, 0.95) * np.array(
            [(0.9, 0, 0, 0), (0.9, 1, 0, 0), (1, 1, 1, 0), (0, 0, 0, 1)][kind], float))
    return Identity(
        masc=masc, age0=u(18, 62), eye_dx=ln(17.6, 0.06), eye_v=eye_v, nose_v=nose_v,
        mouth_v=mouth_v, mouth_w=ln(14.6, 0.09),
        cran_r=(ru, ln(58.0, 0.05), ln(52.0, 0.05)), cran_v=-9.0 + n(0, 2.0),
        jaw_r=(ru * u(0.62, 0.84) * (1.03 if masc else 0.97), jaw_rv, ln(44.0, 0.05)),
        jaw_v=chin - jaw_rv, chin_w=u(-5, 1),
        bridge_w=ln(3.6, 0.15), bridge_h=u(2.0, 7.0),
        tip_r=(ln(7.6, 0.12), ln(5.0, 0.12), ln(5.5, 0.12)), nose_out=ln(10.5, 0.14),
        nostril_sep=ln(3.6, 0.15), nostril_size=u(1.0, 1.9), nostril_dark=u(0.4, 0.8),
        ear_v=(eye_v + nose_v) / 2 + n(0, 2.0), ear_r=(2.6, ln(12.5, 0.1), ln(7.0, 0.12)),
        ear_angle=u(0.25, 0.9),
        eye_w=ln(6.3, 0.08), eye_up=ln(3.1, 0.16), eye_lo=ln(2.1, 0.16), eye_tilt=n(0, 0.09),
        eye_peak=n(0, 0.2), iris_r=ln(3.0, 0.06), iris_col=iris_col, socket=u(0.05, 0.35),
        lid_crease=u(0.0, 0.4), brow_off=ln(7.8, 0.12),
        brow_thick=ln(2.9 if masc else 2.0, 0.22), brow_arch=u(0.3, 3.2),
        brow_len=ln(8.5, 0.1), brow_angle=n(0, 0.12), brow_gap=u(-1.5, 2.5),
        brow_density=u(0.55, 1.0),
        lip_up=ln(2.1, 0.22) * (0.9 if masc else 1.1),
        lip_lo=ln(2.8, 0.22) * (0.9 if masc else 1.1),
        cupid=u(0, 1), mouth_curve=n(0, 0.8), lip_col=lip_col.astype(np.float32),
        skin=skin, skin_waves=waves, blush=u(0, 0.12),
        freckles=u(0.15, 0.5) if rng.random() < 0.15 else 0.0,
        freckle_tex=rng.random((32, 32)) < 0.18, moles=moles, age_spots=spots,
        wrinkle_k=u(0.5, 1.4), hair_col=hair_col, hairline=eye_v - u(21, 32),
        recession=u(0, 1) * masc, widow=u(0, 4) if rng.random() < 0.3 else 0.0,
        parting=float(rng.choice([-1, 0, 1])) * u(0.5, 1),
        bangs=u(0, 1) if rng.random() < 0.35 else 0.0, hair_vol=u(1.5, 6.5), hair_len=hair_len,
        hair_freq=u(0.6, 1.6), bald_rate=u(0, 1) ** 2 * masc, grey_onset=u(32, 60),
        grey_span=u(15, 40), beard=beard, glasses=bool(rng.random() < 0.22),
        glass_p=float(rng.choice([2.0, 3.5, 6.0])), glass_w=u(8.0, 11.0), glass_h=u(5.5, 8.5),
        glass_t=u(0.6, 1.5), glass_col=_FRAME_COLOURS[rng.choice(len(_FRAME_COLOURS))].copy(),
        glass_tint=u(0.0, 0.35) if rng.random() < 0.3 else 0.0,
    )


# ============================================================================ nuisance
@dataclass
class Nuisance:
    """What changes from one photo of a person to the next."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    jitter: np.ndarray = field(default_factory=lambda: np.zeros((5, 2)))
    age: float = 35.0
    smile: float = 0.0
    mouth_open: float = 0.0
    squint: float = 0.0
    brow_raise: float = 0.0
    gaze: tuple[float, float] = (0.0, 0.0)
    light_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    ambient: float = 0.55
    diffuse: float = 0.6
    light_col: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    specular: float = 0.1
    exposure: float = 1.0
    gamma: float = 1.0
    bg: np.ndarray = field(default_factory=lambda: np.full((3, 3), 0.5, np.float32))
    bg_angle: float = 0.0
    bg_waves: list = field(default_factory=list)  # [freq, angle, phase, amplitude]
    blur: float = 0.0
    noise: float = 0.0
    lowres: float = 1.0
    jpeg: int = 90
    grey: bool = False
    occluder: list | None = None  # kind, cx, cy, rx, ry, angle, then an RGB colour
    glasses_on: bool = False
    hair_dvol: float = 0.0
    hair_dlen: float = 0.0
    weight: float = 0.0
    tan: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    lip_shift: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    stubble: float = 0.0


PROFILES = ("train", "lfw", "cfp_frontal", "cfp_profile", "agedb")


def sample_nuisance(
    rng: np.random.Generator,
    ident: Identity,
    profile: str = "train",
    difficulty: float = 1.0,
    age: float | None = None,
    yaw: float | None = None,
) -> Nuisance:
    """Draw the per-image variation for a ``profile`` (one of ``PROFILES``)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    d = max(float(difficulty), 0.0)
    n, u = rng.normal, rng.uniform
    if yaw is None:
        if profile == "cfp_frontal":
            yaw = n(0, 3.0)
        elif profile == "cfp_profile":
            yaw = rng.choice([-1.0, 1.0]) * u(min(60.0, 35 + 25 * d), min(88.0, 60 + 25 * d))
        elif profile == "train" and rng.random() < 0.2:
            yaw = rng.choice([-1.0, 1.0]) * u(25, 25 + 60 * min(d, 1.0))
        else:
            yaw = _clamp(n(0, (14.0 if profile == "train" else 11.0) * d), -45, 45)
    frontal = profile == "cfp_frontal"
    if age is None:
        age = ident.age0 + u(-6, 6)
    az, elev = u(-math.pi, math.pi), u(0, min(0.95, 0.55 * d))
    light_dir = (math.sin(elev) * math.cos(az), math.sin(elev) * math.sin(az) - 0.15,
                 math.cos(elev))
    temp = n(0, 0.06 * d)
    light_col = np.exp(np.array([temp, 0.0, -temp]) + n(0, 0.025 * d, 3)).astype(np.float32)
    bg = np.clip(rng.random((3, 3)) * u(0.3, 1.0) + n(0, 0.05, (3, 3)), 0, 1).astype(np.float32)
    occ = None
    if rng.random() < {"train": 0.10, "lfw": 0.06, "agedb": 0.06}.get(profile, 0.03) * d:
        kind = int(rng.choice(3))  # ellipse, rectangle, a hand (skin-coloured ellipse)
        col = rng.random(3) if kind < 2 else ident.skin * u(0.8, 1.1)
        occ = [kind, u(15, 97), u(45, 110), u(12, 30), u(8, 22), u(0, math.pi), *col.tolist()]
    lowq = profile == "agedb" and age < 30  # the old photographs of AgeDB
    return Nuisance(
        yaw=float(yaw), pitch=n(0, 2.0 if frontal else 6.5 * d),
        roll=n(0, 2.0 if frontal else 5.0 * d), jitter=n(0, 1.1 * d, (5, 2)), age=float(age),
        smile=_clamp(u(-0.3, 1.0) * d, 0, 1), mouth_open=_clamp(u(-1.0, 1.0) * d, 0, 1),
        squint=_clamp(n(0, 0.25 * d), -0.2, 0.6), brow_raise=n(0, 0.8 * d),
        gaze=(n(0, 0.8 * d), n(0, 0.4 * d)), light_dir=light_dir, ambient=u(0.35, 0.65),
        diffuse=u(0.35, 0.35 + 0.5 * min(d, 1.2)), light_col=light_col,
        specular=u(0.0, 0.18), exposure=math.exp(n(0, 0.16 * d)),
        gamma=math.exp(n(0, 0.1 * d)), bg=bg, bg_angle=u(0, 2 * math.pi),
        bg_waves=[[u(0.02, 0.15), u(0, math.pi), u(0, 6.3), u(0, 0.12)] for _ in range(2)],
        blur=max(0.0, n(0.35, 0.4 * d) + (0.4 if lowq else 0.0)),
        noise=abs(n(0, 0.018 * d)) + (0.015 if lowq else 0.0),
        lowres=_clamp(1 - abs(n(0, 0.22 * d)), 0.35, 1), jpeg=int(_clamp(n(82, 10 * d), 35, 97)),
        grey=bool(rng.random() < (0.25 if lowq else 0.04 * d)), occluder=occ,
        glasses_on=bool(rng.random() < (0.92 if ident.glasses else 0.02 * d)),
        hair_dvol=n(0, 0.8 * d), hair_dlen=n(0, 2.5 * d), weight=n(0, 0.025 * d),
        tan=(n(0, 0.03 * d) * np.array([1.0, 0.8, 0.6])).astype(np.float32),
        lip_shift=n(0, 0.03 * d, 3).astype(np.float32),
        stubble=_clamp(n(-0.2, 0.35 * d), 0, 0.6) * ident.masc,
    )


# ============================================================================ geometry
def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head -> camera rotation (degrees): roll @ pitch @ yaw."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return _mm(rz, _mm(rx, ry))


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Small matrix product without BLAS (whose threads cost more than these products)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if b.ndim == 1:
        return (a * b).sum(-1)
    if a.ndim == 1:
        return (a[:, None] * b).sum(0)
    return (a[:, :, None] * b[None]).sum(1)


def _inv2(m: np.ndarray) -> np.ndarray:
    (a, b), (c, d) = m.tolist()
    det = a * d - b * c
    return np.array([[d, -b], [-c, a]]) / det


def _rot_u(angle: float) -> np.ndarray:
    """Rotation about the u axis: positive tips the bottom forward."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_v(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2x3) taking ``src`` points onto ``dst``.

    In complex numbers the best ``z -> c z + t`` has ``c = sum(conj(s) d) / sum(|s|^2)``
    over the centred points.
    """
    ms, md = src.mean(0), dst.mean(0)
    zs = (src[:, 0] - ms[0]) + 1j * (src[:, 1] - ms[1])
    zd = (dst[:, 0] - md[0]) + 1j * (dst[:, 1] - md[1])
    c = complex((np.conj(zs) * zd).sum() / (np.abs(zs) ** 2).sum())
    m = np.array([[c.real, -c.imag, 0.0], [c.imag, c.real, 0.0]])
    m[:, 2] = md - _mm(m[:, :2], ms)
    return m


@dataclass
class _Ellipsoid:
    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray  # columns: the local axes in head space


class _Head:
    """The posed geometry of one identity in one image."""

    def __init__(self, ident: Identity, nz: Nuisance) -> None:
        self.ident = ident
        age_f = _clamp((nz.age - 40) / 40, -0.5, 1.0)
        cr = np.array(ident.cran_r)
        self.cran = _Ellipsoid(np.array([0.0, ident.cran_v, 5.0 - cr[2]]), cr, np.eye(3))
        jr = np.array(ident.jaw_r)
        jr[0] *= 1 + nz.weight + 0.04 * age_f
        jv = ident.jaw_v + 1.5 * max(age_f, 0)
        dv = (ident.mouth_v - jv) / jr[1]  # put the jaw front at chin_w below the mouth
        jw = ident.chin_w - jr[2] * math.sqrt(max(1 - dv * dv, 0.05))
        self.jaw = _Ellipsoid(np.array([0.0, jv, jw]), jr, np.eye(3))
        self._face_ell = [(*e.center.tolist(), *e.radii.tolist()) for e in (self.cran, self.jaw)]
        self._back = float(self.cran.center[2])
        # nose: a tilted bridge from between the eyes down to a rounder tip
        tr = np.array(ident.tip_r)
        tip_front = self.face_w(0.0, ident.nose_v) + ident.nose_out
        self.tip = _Ellipsoid(np.array([0.0, ident.nose_v + 0.6, tip_front - tr[2]]), tr, np.eye(3))
        top_v = ident.eye_v + 1.0
        top_w = self.face_w(0.0, top_v) + ident.bridge_h
        low_v, low_w = ident.nose_v - tr[1] * 0.6, tip_front - 1.5
        length = math.hypot(low_v - top_v, low_w - top_w)
        ang = math.atan2(low_w - top_w, low_v - top_v)
        brot = _rot_u(ang)
        br = np.array([ident.bridge_w, length / 2 + 1.5, 3.2])
        mid = np.array([0.0, (top_v + low_v) / 2, (top_w + low_w) / 2]) - brot[:, 2] * br[2]
        self.bridge = _Ellipsoid(mid, br, brot)
        self.ears = []
        for side in (-1, 1):
            c = self.cran.center
            dvv = (ident.ear_v - c[1]) / cr[1]
            eu = cr[0] * math.sqrt(max(1 - dvv * dvv, 0.1)) * 0.98
            self.ears.append(_Ellipsoid(np.array([side * eu, ident.ear_v, c[2] - 4.0]),
                                        np.array(ident.ear_r), _rot_v(side * ident.ear_angle)))
        hr = cr + max(ident.hair_vol + nz.hair_dvol, 0.8)
        self.hair_len = ident.hair_len + nz.hair_dlen
        hv = ident.cran_v - 1.0
        if self.hair_len > 40:  # long hair: a shell down to the shoulders
            hr = hr * np.array([1.05, 1.2, 1.02])
            hv += 10.0
        self.hair = _Ellipsoid(np.array([0.0, hv, self.cran.center[2] - 1.0]), hr, np.eye(3))
        self.neck = _Ellipsoid(np.array([0.0, ident.jaw_v + 40.0, self.cran.center[2] + 4.0]),
                               np.array([jr[0] * 0.62, 45.0, 24.0]), np.eye(3))
        self.objects = [self.cran, self.jaw, self.bridge, self.tip, *self.ears, self.hair,
                        self.neck]
        self.rot = _rotation(nz.yaw, nz.pitch, nz.roll)
        bald = ident.bald_rate * _clamp((nz.age - 28) / 35, 0, 1)  # hairline recedes with age
        self.hairline = ident.hairline - 14 * bald
        self.recession = ident.recession + 2.5 * bald
        self.bald = bald

    def face_w(self, u: float, v: float) -> float:
        """Depth of the face surface (front of cranium or jaw) at (u, v)."""
        best = None
        for cu, cv, cw, ru, rv, rw in self._face_ell:
            du, dv = (u - cu) / ru, (v - cv) / rv
            q = 1.0 - du * du - dv * dv
            if q > 0:
                w = cw + rw * math.sqrt(q)
                best = w if best is None or w > best else best
        return self._back if best is None else best

    def landmarks3d(self) -> np.ndarray:
        i = self.ident
        pts = [(-i.eye_dx, i.eye_v), (i.eye_dx, i.eye_v), (0.0, i.nose_v),
               (-i.mouth_w, i.mouth_v), (i.mouth_w, i.mouth_v)]
        out = np.array([(a, b, self.face_w(a, b)) for a, b in pts])
        out[2, 2] = self.tip.center[2] + self.tip.radii[2]
        return out


# ============================================================================ rendering
def _soft(d: np.ndarray, width: float = 0.8) -> np.ndarray:
    """Signed distance (positive inside) -> coverage in [0, 1]."""
    x = d * (1.0 / width)
    x += 0.5
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 1.0, out=x)


def _mix(dst: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """dst += alpha * (colour - dst), in place; planar ``dst`` (3, h, w).

    Planar, because numpy broadcasts over a trailing axis of 3 very slowly.
    """
    if colour.ndim == 1:
        colour = colour.reshape(3, 1, 1)
    dst += alpha * (colour - dst)


def _darken(dst: np.ndarray, amount: np.ndarray) -> None:
    dst *= 1.0 - amount


def _sub(alb: np.ndarray, win: tuple[slice, slice]) -> np.ndarray:
    return alb[:, win[0], win[1]]


def _pos(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _aligning(head: _Head, nz: Nuisance) -> tuple[np.ndarray, np.ndarray]:
    """(the landmarks in camera xy + ORIGIN, the similarity camera xy -> output pixel)."""
    src = _mm(head.landmarks3d(), head.rot.T)[:, :2] + ORIGIN
    dst = TEMPLATE + nz.jitter
    sim = similarity(src, dst)
    scale = math.hypot(sim[0, 0], sim[1, 0])
    sim[:, :2] *= _clamp(scale, 0.8, 1.35) / scale  # a profile would zoom in too far
    sim[:, 2] = dst.mean(0) - _mm(sim[:, :2], src.mean(0))
    return src, sim


def image_landmarks(ident: Identity, nz: Nuisance) -> np.ndarray:
    """The five landmarks (ArcFace order: the eye on the image's left first) in the pixels
    of the image that ``render(ident, nz, rng)`` draws: where the posed head's eyes, nose
    tip and mouth corners land, jitter and the zoom limit included."""
    src, sim = _aligning(_Head(ident, nz), nz)
    return _mm(src, sim[:, :2].T) + sim[:, 2]


class _Canvas:
    """Ray-cast one posed head: object id, head coordinates and shading per pixel."""

    def __init__(self, head: _Head, nz: Nuisance) -> None:
        self.head, self.nz = head, nz
        rot = head.rot
        _, sim = _aligning(head, nz)
        self.sim = sim
        # head point p -> output pixel, for feature windows
        self.proj = _mm(sim[:, :2], rot[:2])
        self.proj_t = _mm(sim[:, :2], ORIGIN) + sim[:, 2]
        inv = _inv2(sim[:, :2])
        rt = rot.T
        ma = _mm(rt[:, :2], inv)  # head-space ray origin a = ma o + ba
        ba = _mm(rt[:, :2], -_mm(inv, sim[:, 2]) - ORIGIN)
        d = rt[:, 2]  # ray direction in head space (toward the camera)
        amat = np.column_stack([ma, ba])  # a = amat @ (ox, oy, 1)
        # Ray p = a + t d meets ellipsoid k where |W (p - c)| = 1, W = diag(1/r) R^T.
        # With q = W (a - c) affine in the pixel and e = W d, the quarter
        # discriminant (q.e)^2 - |e|^2 (|q|^2 - 1) is a quadratic form in the pixel
        # coordinates: all objects cost two small einsums over a fixed basis.
        k = len(head.objects)
        coef, lin, aas = np.empty((k, 6)), np.empty((k, 3)), np.empty(k)
        for i, e in enumerate(head.objects):
            w = e.rot.T / e.radii[:, None]
            mq = _mm(w, amat)
            mq[:, 2] -= _mm(w, e.center)
            ev = _mm(w, d)
            aa = float((ev * ev).sum())
            l = _mm(ev, mq)
            sq = l[:, None] * l[None, :] - aa * _mm(mq.T, mq)
            coef[i] = [sq[0, 0], sq[1, 1], 2 * sq[0, 1], 2 * sq[0, 2], 2 * sq[1, 2], sq[2, 2] + aa]
            lin[i], aas[i] = l, aa
        disc = np.einsum("kj,jn->kn", coef.astype(np.float32), _BASIS)
        lb = np.einsum("kj,jn->kn", lin.astype(np.float32), _GRID)
        a = np.einsum("kj,jn->kn", amat.astype(np.float32), _GRID)
        d32 = d.astype(np.float32)[:, None]
        tn = np.full(disc.shape[1], -np.inf, np.float32)
        obj = np.full(disc.shape[1], BACKGROUND, np.intp)
        for i in range(k):
            t = np.sqrt(_pos(disc[i]))
            t -= lb[i]
            t *= np.float32(1 / aas[i])
            valid = disc[i] > 0
            if i == HAIR:  # the hair shell only exists where there is hair
                valid &= self._hair_present(a + np.where(valid, t, 0) * d32)
            nearer = valid & (t > tn)
            obj[nearer] = i
            np.copyto(tn, t, where=nearer)
        miss = obj == BACKGROUND
        tn[miss] = 0.0
        p = a + tn * d32
        self.obj = obj.reshape(SIZE, SIZE)
        self.u, self.v, self.w = (c.reshape(SIZE, SIZE) for c in p)
        self._shade(p, obj, d)
        self.front = (self.w > float(head.cran.center[2]) + 6) & (self.obj <= JAW)

    def _hair_present(self, p: np.ndarray) -> np.ndarray:
        head, ident = self.head, self.head.ident
        u, v, w = p[0], p[1], p[2] - np.float32(head.cran.center[2])
        az = np.abs(np.arctan2(u, w))  # 0 at the front, pi at the back
        side = np.minimum(_pos((az - 0.45) * 1.6), 1.0)
        un = u * np.float32(1 / head.cran.radii[0])
        line = head.hairline + head.recession * 9 * un * un
        if ident.widow:
            line -= ident.widow * np.exp(u * u * np.float32(-1 / 20))
        if ident.bangs:
            fringe = ident.eye_v - ident.brow_off - 3 - line
            line += ident.bangs * fringe * _pos(1 - np.abs(un - 0.25 * ident.parting))
        limit = line + (head.hair_len - line) * side
        present = v < limit
        if head.bald > 0.5:  # a bald crown keeps only a fringe at the sides and back
            crown = float(head.hair.center[1] - head.hair.radii[1] * (1.25 - head.bald))
            present &= (v > crown) | (side > 0.7)
        return present

    def _shade(self, p: np.ndarray, obj: np.ndarray, view: np.ndarray) -> None:
        """Lambert plus a small highlight from the normal of whatever was hit."""
        nz = self.nz
        params = np.zeros((N_OBJ + 1, 9), np.float32)
        for k, e in enumerate(self.head.objects):
            s = _mm(e.rot / e.radii**2, e.rot.T)
            params[k] = [*e.center, s[0, 0], s[1, 1], s[2, 2], s[0, 1], s[0, 2], s[1, 2]]
        g = np.ascontiguousarray(np.take(params, obj, axis=0).T)  # (9, N), fast gather
        du, dv, dw = p[0] - g[0], p[1] - g[1], p[2] - g[2]
        nu = g[3] * du + g[6] * dv + g[7] * dw
        nv = g[6] * du + g[4] * dv + g[8] * dw
        nw = g[7] * du + g[8] * dv + g[5] * dw
        inv = 1.0 / np.sqrt(nu * nu + nv * nv + nw * nw + 1e-12)
        ld = np.array(nz.light_dir)
        lh = _mm(self.head.rot.T, ld / math.sqrt((ld**2).sum())).astype(np.float32)
        lam = (nu * lh[0] + nv * lh[1] + nw * lh[2]) * inv
        hv = lh + view.astype(np.float32)
        hv /= np.float32(math.sqrt(float((hv**2).sum())))
        # a highlight where n.h > 0.8, cubed: no chain of squares that sinks into denormals
        sp = _pos((nu * hv[0] + nv * hv[1] + nw * hv[2]) * inv * 5 - 4)
        sp = sp * sp * sp
        self.shade = (nz.ambient + nz.diffuse * _pos(lam)).reshape(SIZE, SIZE)
        self.spec = (sp * nz.specular).reshape(SIZE, SIZE)

    def window(self, u0: float, u1: float, v0: float, v1: float, margin: int = 2):
        """Output-pixel slices that cover a head-space box on the face surface."""
        (p00, p01, p02), (p10, p11, p12) = self.proj.tolist()
        tx, ty = self.proj_t.tolist()
        xs, ys = [], []
        vm = (v0 + v1) / 2
        um = (u0 + u1) / 2
        # depth varies mostly across u: take it at the middle row, the margin covers the rest
        for uu, ww in ((u0, self.head.face_w(u0, vm)), (u1, self.head.face_w(u1, vm)),
                       (um, self.head.face_w(um, vm))):
            for vv in (v0, v1):
                xs.append(p00 * uu + p01 * vv + p02 * ww + tx)
                ys.append(p10 * uu + p11 * vv + p12 * ww + ty)
        x0, x1 = max(int(min(xs)) - margin, 0), min(int(max(xs)) + margin + 2, SIZE)
        y0, y1 = max(int(min(ys)) - margin, 0), min(int(max(ys)) + margin + 2, SIZE)
        if x1 <= x0 or y1 <= y0:
            return None
        return slice(y0, y1), slice(x0, x1)


def render(ident: Identity, nz: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """One aligned ``(112, 112, 3)`` uint8 RGB face."""
    cv = _Canvas(_Head(ident, nz), nz)
    alb = _albedo(cv, ident, nz)
    _paint_face(cv, alb, ident, nz, rng)
    img = alb * cv.shade
    img *= (nz.light_col * np.float32(nz.exposure)).reshape(3, 1, 1)
    img += cv.spec
    img = np.where(cv.obj != BACKGROUND, img, _background(nz))
    if nz.occluder is not None:
        _occlude(img, nz.occluder)
    if nz.noise > 0:
        start = int(rng.integers(0, len(_NOISE) - img.size))
        img += _NOISE[start: start + img.size].reshape(img.shape) * np.float32(nz.noise)
    if nz.grey:
        img[:] = np.einsum("chw,c->hw", img, _LUMA)
    img *= 255
    img += 0.5
    np.clip(img, 0, 255, out=img)
    out = np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 0))
    if abs(nz.gamma - 1) > 1e-3:
        lut = (255 * (np.arange(256) / 255) ** nz.gamma + 0.5).astype(np.uint8)
        out = lut[out]
    return _camera(out, nz)


def _albedo(cv: _Canvas, ident: Identity, nz: Nuisance) -> np.ndarray:
    age_f = _clamp((nz.age - 30) / 45, 0, 1)
    skin = ident.skin * (1 - 0.08 * age_f) + nz.tan + 0.03 * age_f
    grey = _clamp((nz.age - ident.grey_onset) / ident.grey_span, 0, 1)
    table = np.empty((3, N_OBJ + 1), np.float32)
    table[:] = skin[:, None]
    table[:, HAIR] = ident.hair_col * (1 - grey) + _GREY_HAIR * grey
    table[:, NECK] = skin * 0.88
    table[:, BACKGROUND] = 0
    alb = table[:, cv.obj]
    u, v = cv.u, cv.v
    tex = np.ones_like(u)  # skin blotches: the identity's waves in head coordinates
    for f, ang, ph, amp in ident.skin_waves:
        tex += amp * np.sin((u * (f * math.cos(ang)) + v * (f * math.sin(ang))) + ph)
    hm = cv.obj == HAIR
    if hm.any():  # strands fanning from the parting
        az = np.arctan2(u - ident.parting * 8, cv.w - float(cv.head.cran.center[2]))
        streak = np.sin(az * (40 * ident.hair_freq) + 0.25 * np.sin(v * 0.2))
        tex = np.where(hm, 0.95 + 0.18 * streak, tex)
    alb *= tex
    return alb


def _paint_face(cv: _Canvas, alb: np.ndarray, ident: Identity, nz: Nuisance,
                rng: np.random.Generator) -> None:
    head, age, face = cv.head, nz.age, cv.front
    wr = _clamp((age - 30) / 40, 0, 1) * ident.wrinkle_k
    ev, nv, mv = ident.eye_v, ident.nose_v, ident.mouth_v
    # symmetric features are painted for both sides at once, from |u|
    if ident.blush > 0.01:
        win = cv.window(-33, 33, nv - 8, nv + 8)
        if win is not None:
            r2 = ((np.abs(cv.u[win]) - 24) * (1 / 9)) ** 2 + ((cv.v[win] - nv) * (1 / 8)) ** 2
            _mix(_sub(alb, win), _BLUSH, ident.blush * _pos(1 - r2) * face[win])
    if ident.freckles > 0:
        win = cv.window(-30, 30, ev, nv + 8)
        if win is not None:
            iu = np.clip(((cv.u[win] + 30) * (31 / 60)).astype(np.int32), 0, 31)
            iv = np.clip(((cv.v[win] - ev) * (31 / (nv + 8 - ev))).astype(np.int32), 0, 31)
            dots = ident.freckle_tex[iv, iu] & face[win]
            _darken(_sub(alb, win), dots * np.float32(ident.freckles * 0.35))
    spots = ident.moles + [[*s[:3], 0.25] for s in ident.age_spots if age > s[3]]
    for su, sv, sr, dark in spots:
        win = cv.window(su - sr - 1, su + sr + 1, sv - sr - 1, sv + sr + 1, margin=1)
        if win is not None:
            d = sr - np.hypot(cv.u[win] - su, cv.v[win] - sv)
            _mix(_sub(alb, win), _MOLE, _soft(d, 0.9) * face[win] * dark)
    if wr > 0.05:  # forehead lines
        win = cv.window(-26, 26, head.hairline + 2, ev - ident.brow_off - 3)
        if win is not None:
            u, v = cv.u[win], cv.v[win]
            lines = _pos(np.sin(v * 1.25 + u * u * 0.005)) ** 6
            fade = _pos(1 - np.abs(u) / 26) * face[win]
            _darken(_sub(alb, win), lines * fade * (0.22 * min(wr, 1.2)))
    fold = wr * 0.8 + 0.6 * nz.smile
    if fold > 0.1:  # nasolabial folds
        mu, nu = ident.mouth_w + 3, ident.tip_r[0] + 3
        reach = max(mu, nu) + 6
        win = cv.window(-reach, reach, nv, mv + 2)
        if win is not None:
            au, v = np.abs(cv.u[win]), cv.v[win]
            tt = np.clip((v - nv) * (1 / (mv - nv)), 0, 1)
            uc = nu + (mu - nu) * tt + 2.5 * np.sin(tt * math.pi)
            on = (v > nv) & (v < mv + 1) & face[win]
            crease = _soft(0.9 - np.abs(au - uc), 1.0) * on
            _darken(_sub(alb, win), crease * (0.16 * min(fold, 1.3)))
    _paint_eyes(cv, alb, ident, nz, wr)
    _paint_nostrils(cv, alb, ident)
    _paint_mouth(cv, alb, ident, nz, wr)
    _paint_beard(cv, alb, ident, nz, rng)
    if nz.glasses_on:
        _paint_glasses(cv, alb, ident)


def _paint_eyes(cv: _Canvas, alb, ident: Identity, nz: Nuisance, wr: float) -> None:
    """Both eyes and brows in one window: each pixel belongs to the eye on its side."""
    cx, cy = ident.eye_dx, ident.eye_v
    brow_y = cy - ident.brow_off - 1.2 * nz.brow_raise
    win = cv.window(-cx - 12, cx + 12, brow_y - ident.brow_arch - 4, cy + 7)
    if win is None:
        return
    face = cv.front[win]
    a = _sub(alb, win)
    u = cv.u[win]
    side = np.where(u < 0, np.float32(-1), np.float32(1))
    du = np.abs(u) - cx  # positive toward the outer corner
    v = cv.v[win]
    dv = v - cy
    ct, st = math.cos(ident.eye_tilt), math.sin(ident.eye_tilt)
    eu = du * ct - dv * st
    ev = du * st + dv * ct
    ew = ident.eye_w
    # socket shadow
    r2 = (eu * (1 / (ew * 1.55))) ** 2 + ((ev + 0.8) * (1 / 5.5)) ** 2
    _darken(a, _pos(1 - r2) * face * (ident.socket * 0.45))
    # the opening between an upper and a lower lid arc
    openness = _clamp(1 - nz.squint - 0.25 * nz.smile - 0.15 * wr, 0.15, 1.2)
    x = np.clip(eu * (1 / ew), -1.2, 1.2)
    up = -ident.eye_up * openness * np.sqrt(_pos(1 - (x - ident.eye_peak * 0.3) ** 2))
    lo = ident.eye_lo * openness * np.sqrt(_pos(1 - x * x))
    edge = (1 - np.abs(eu * (1 / ew))) * 3
    inside = np.minimum(np.minimum(ev - up, lo - ev), edge)
    if ident.lid_crease > 0.02:
        crease = _soft(1.0 - np.abs(ev - (up - 2.2)), 1.2) * (np.abs(x) < 0.95)
        _darken(a, crease * face * (ident.lid_crease * 0.5))
    cover = _soft(inside, 0.7) * face
    _mix(a, _SCLERA, cover)
    gx, gy = nz.gaze
    ir = np.hypot(eu - gx * side, ev - gy + 0.2)
    _mix(a, ident.iris_col, _soft(ident.iris_r - ir, 0.6) * cover)
    _darken(a, _soft(ident.iris_r - 0.4 - ir, 0.6) * (ir > ident.iris_r - 0.9) * cover * 0.35)
    _mix(a, _DARK, _soft(ident.iris_r * 0.42 - ir, 0.5) * cover)
    lash = _soft(0.65 - np.abs(ev - up + 0.2), 0.6) * (np.abs(x) < 1.05) * face
    _mix(a, _DARK, lash * 0.85)
    # the brow
    bu = du - ident.brow_gap
    bl = ident.brow_len
    t = np.clip(bu * (1 / bl), -1.0, 1.0)
    curve = brow_y - ident.brow_arch * (1 - (t - 0.15) ** 2) + ident.brow_angle * bu
    half = ident.brow_thick * 0.5 * (1.15 - 0.45 * _pos(t))
    d = np.minimum(half - np.abs(v - curve), (1 - np.abs(bu * (1 / bl))) * (bl * 0.6))
    grey = _clamp((nz.age - ident.grey_onset - 10) / (ident.grey_span * 2), 0, 0.6)
    _mix(a, ident.hair_col * (0.75 * (1 - grey)) + 0.6 * grey,
         _soft(d, 0.9) * face * ident.brow_density)
    if wr > 0.2:  # crow's feet and bags under the eyes
        ang = np.arctan2(ev, eu - ew - 1)
        rr = np.hypot(eu - ew - 1, ev)
        feet = _pos(np.sin(ang * 9)) ** 4 * _pos(1 - np.abs(rr - 4) * (1 / 3))
        _darken(a, feet * (eu > ew) * face * (0.18 * min(wr, 1.2)))
        bag = _soft(0.8 - np.abs(ev - lo - 2.6 - 0.5 * x * x), 1.0) * (np.abs(x) < 0.9)
        _darken(a, bag * face * (0.15 * min(wr, 1.2)))


def _paint_nostrils(cv: _Canvas, alb, ident: Identity) -> None:
    tr = ident.tip_r
    nv = ident.nose_v + tr[1] * 0.55
    win = cv.window(-tr[0] - 2, tr[0] + 2, nv - 3, nv + 3)
    if win is None:
        return
    u, v = cv.u[win], cv.v[win]
    on = (cv.obj[win] <= NOSE_TIP) & (cv.obj[win] != NOSE)
    s = ident.nostril_size
    du = (np.abs(u) - ident.nostril_sep) * (1 / (s * 1.4))
    dv = (v - nv) * (1.3 / s)
    d = (1 - np.sqrt(du * du + dv * dv)) * s
    _darken(_sub(alb, win), _soft(d, 0.8) * on * ident.nostril_dark)


def _paint_mouth(cv: _Canvas, alb, ident: Identity, nz: Nuisance, wr: float) -> None:
    mw = ident.mouth_w * (1 + 0.08 * nz.smile)
    mv = ident.mouth_v
    gap = 5.5 * nz.mouth_open
    thin = 1 - 0.3 * min(wr, 1)
    ul, ll = ident.lip_up * thin, ident.lip_lo * thin
    win = cv.window(-mw - 4, mw + 4, mv - ul - 5, mv + gap + ll + 4)
    if win is None:
        return
    face = cv.front[win]
    a = _sub(alb, win)
    u, v = cv.u[win], cv.v[win]
    x = u * (1 / mw)
    xc = np.clip(x, -1, 1)
    line = mv - (0.25 * ident.mouth_curve + 2.2 * nz.smile) * xc * xc
    body = np.sqrt(_pos(1 - xc * xc))
    bow = 1 - ident.cupid * 0.5 * np.exp(u * u * (-1 / 3.0))
    top = line - gap * 0.3 * body
    bot = line + gap * 0.7 * body
    edge = (1 - np.abs(x)) * mw
    upper = np.minimum(np.minimum(v - (top - ul * body * bow - 0.3), top - v), edge)
    lower = np.minimum(np.minimum(bot + ll * body + 0.3 - v, v - bot), edge)
    lip = np.clip(ident.lip_col + nz.lip_shift, 0, 1)
    _mix(a, lip, _soft(upper, 0.8) * face)
    _mix(a, lip * 1.06, _soft(lower, 0.8) * face)
    inner = np.minimum(np.minimum(v - top + 0.45, bot + 0.45 - v), edge)
    _mix(a, _MOUTH_IN, _soft(inner, 0.7) * face)
    if gap > 1.0 and nz.smile > 0.3:
        teeth = np.minimum(np.minimum(v - top, top + gap * 0.35 - v), edge - 2)
        _mix(a, _TEETH, _soft(teeth, 0.7) * face)


def _paint_beard(cv: _Canvas, alb, ident: Identity, nz: Nuisance,
                 rng: np.random.Generator) -> None:
    mous, chin, cheek, stub = ident.beard
    stub = max(stub, nz.stubble)
    if max(mous, chin, cheek, stub) < 0.05:
        return
    grey = _clamp((nz.age - ident.grey_onset) / ident.grey_span, 0, 1)
    col = ident.hair_col * (1 - grey) + _GREY_HAIR * grey
    mv, mw, nv = ident.mouth_v, ident.mouth_w, ident.nose_v
    win = cv.window(-46, 46, nv + 1, mv + 30)
    if win is None:
        return
    face = cv.front[win]
    u, v = cv.u[win], cv.v[win]
    au = np.abs(u)
    dens = np.zeros_like(u)
    if mous > 0:  # an arc over the upper lip, thinning toward the corners
        xc = np.clip(u * (1 / (mw + 3)), -1, 1)
        lip_top = mv - ident.lip_up - 0.4 - (0.25 * ident.mouth_curve) * xc * xc
        thick = 4.5 * np.sqrt(_pos(1 - xc * xc)) + 0.5
        d = np.minimum(np.minimum(lip_top - v, v - (lip_top - thick)), mw + 3 - au)
        np.maximum(dens, _soft(d, 1.2) * mous, out=dens)
    if chin > 0:
        d = np.minimum(v - (mv + ident.lip_lo + 1.5), 11 - au)
        np.maximum(dens, _soft(d, 1.5) * chin, out=dens)
    if cheek > 0:
        d = np.minimum(v - (nv + 6 + 0.02 * _pos(40 - au) ** 1.5), au - mw - 1)
        np.maximum(dens, _soft(d, 2.0) * cheek, out=dens)
    if stub > 0:
        d = np.minimum(v - (nv + 4), 40 - au)
        np.maximum(dens, _soft(d, 3.0) * (stub * 0.45) * (np.abs(v - mv) > 2.5), out=dens)
    fine = rng.random(u.shape, dtype=np.float32)
    _mix(_sub(alb, win), col, dens * face * (0.55 + 0.45 * fine))


def _paint_glasses(cv: _Canvas, alb, ident: Identity) -> None:
    gw, gh, p, th = ident.glass_w, ident.glass_h, ident.glass_p, ident.glass_t
    ev, ex = ident.eye_v + 0.5, ident.eye_dx
    win = cv.window(-ex - gw - 14, ex + gw + 14, ev - gh - 2, ev + gh + 2)
    if win is None:
        return
    obj = cv.obj[win]
    on = (obj != HAIR) & (obj != BACKGROUND) & (cv.w[win] > float(cv.head.cran.center[2]))
    u, v = cv.u[win], cv.v[win]
    a = _sub(alb, win)
    au = np.abs(u)
    du = np.abs(au - ex) * (1 / gw)
    dv = np.abs(v - ev) * (1 / gh)
    r = (du**p + dv**p) ** (1.0 / p)
    m = min(gw, gh)
    frame = _soft(th - np.abs(r - 1) * m, 0.7)
    lens = _soft((1 - r) * m, 0.7)
    bridge = np.minimum(th * 0.8 - np.abs(v - (ev - gh * 0.35)), ex - gw * 0.8 - au)
    arm = np.minimum(th * 0.7 - np.abs(v - (ev - gh * 0.5)), au - ex - gw * 0.95)
    np.maximum(frame, _soft(np.maximum(bridge, arm), 0.7), out=frame)
    if ident.glass_tint > 0:
        _mix(a, _LENS, lens * on * ident.glass_tint)
    _mix(a, ident.glass_col, frame * on)


def _background(nz: Nuisance) -> np.ndarray:
    """Gradient plus two soft waves; separable, so cheap."""
    c = nz.bg
    ca, sa = math.cos(nz.bg_angle), math.sin(nz.bg_angle)
    g = (_AX * (ca / SIZE))[None, :] + (_AX * (sa / SIZE) + 0.5)[:, None]
    g = np.clip(g, 0, 1)
    blob = np.zeros((SIZE, SIZE), np.float32)
    for f, ang, ph, amp in nz.bg_waves:
        ax = _AX * (f * math.cos(ang)) + ph
        ay = _AX * (f * math.sin(ang))
        blob += np.outer(np.cos(ay), amp * np.sin(ax)) + np.outer(np.sin(ay), amp * np.cos(ax))
    bg = g * (c[1] - c[0]).reshape(3, 1, 1)
    bg += blob * (c[2] - 0.5).reshape(3, 1, 1)
    bg += c[0].reshape(3, 1, 1)
    return bg


def _occlude(img: np.ndarray, occ: list) -> None:
    kind, cx, cy, rx, ry, ang = occ[:6]
    col = np.array(occ[6:9], np.float32)
    ca, sa = math.cos(ang), math.sin(ang)
    x = (_OX - cx) * ca + (_OY - cy) * sa
    y = (_OY - cy) * ca - (_OX - cx) * sa
    if kind == 1:
        d = np.minimum(rx - np.abs(x), ry - np.abs(y))
    else:
        d = (1 - np.sqrt((x * (1 / rx)) ** 2 + (y * (1 / ry)) ** 2)) * min(rx, ry)
    shade = np.clip(0.8 + 0.4 * (y * (1 / (2 * ry)) + 0.5), 0.6, 1.2)
    _mix(img, col.reshape(3, 1, 1) * shade, _soft(d, 1.0))


def _camera(img: np.ndarray, nz: Nuisance) -> np.ndarray:
    """Lens and sensor: low resolution and blur, through PIL."""
    if nz.lowres >= 0.97 and nz.blur < 0.2:
        return img
    pil = Image.fromarray(img)
    if nz.lowres < 0.97:
        s = max(int(SIZE * nz.lowres), 16)
        pil = pil.resize((s, s), Image.BILINEAR).resize((SIZE, SIZE), Image.BILINEAR)
    if nz.blur >= 0.2:
        pil = pil.filter(ImageFilter.GaussianBlur(nz.blur))
    return np.asarray(pil)


def to_jpeg(img: np.ndarray, quality: int) -> bytes:
    """Encode with PIL (deterministic for a given image and quality)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
