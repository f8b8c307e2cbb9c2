"""A deterministic synthetic dataset of drawn faces whose expression is the label.

Every page and test of Emotion Studio must run on a fresh machine with no data
downloaded, so this module draws one.  The label is carried only by the facial
features that carry it in real photos (mouth curve and opening, brow height and
angle, eye opening and lid shape, wrinkles); everything else -- skin tone, hair,
clothes, pose, scale, position, lighting, background and pixel noise -- is
drawn from the same distribution for every class.  A model that scores well
here therefore had to look at the face, not at the colour of the picture.

Images are drawn with ``PIL.ImageDraw`` at 2-4x the output size and reduced
(box filter), which antialiases the strokes.  Each image gets its own random
stream derived from the seed with :class:`numpy.random.SeedSequence` spawn keys
``(split, expression, index)``, so the output is byte-identical for the same
config regardless of generation order, and an expression's images do not
depend on which other classes were requested.

Usage (this is how :func:`emotion.data.sources.load_dataset_spec` calls it)::

    config = SyntheticConfig.from_spec("synthetic:n=100,test=20,size=64,classes=angry+happy")
    folder = materialize_synthetic(config, cache_dir / "synthetic")
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw

from emotion.data.types import DatasetError
from emotion.fileio import atomic_folder

logger = logging.getLogger(__name__)

# Bump whenever a change to this module changes the pixels it produces: it is
# part of every cache key, so stale cached sets are never reused.
GENERATOR_VERSION = 1

# FER-2013's seven expressions, in FER's label order.  The order also fixes each
# expression's spawn key, so never reorder it (append new ones at the end).
EXPRESSIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
DEFAULT_SYNTHETIC_CLASSES: tuple[str, ...] = ("angry", "happy", "sad")
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 512
MAX_PER_CLASS = 100_000
MARKER_NAME = "config.json"
SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_KEYS = {"train": 0, "test": 1}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; every field is part of the cache key."""

    classes: tuple[str, ...] = field(
        default=DEFAULT_SYNTHETIC_CLASSES,
        metadata={"help": f"expressions to generate, any of {', '.join(EXPRESSIONS)}"},
    )
    train_per_class: int = field(
        default=200, metadata={"help": "training images per class (spec key: n)"}
    )
    test_per_class: int = field(
        default=50, metadata={"help": "held-out test images per class (spec key: test)"}
    )
    image_size: int = field(
        default=96,
        metadata={
            "help": f"width = height in pixels, {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} (spec key: size)"
        },
    )
    seed: int = field(
        default=0, metadata={"help": "random seed; the same seed gives byte-identical images"}
    )

    def __post_init__(self) -> None:
        # Normalise what the UI/CLI may pass (a list, "Happy") so equal configs
        # compare and hash equal, then validate with messages that say the fix.
        classes = self.classes
        if isinstance(classes, str):
            classes = tuple(c for c in classes.replace("+", ",").split(","))
        try:
            classes = tuple(str(c).strip().lower() for c in classes)
        except TypeError:
            raise DatasetError(
                f"synthetic classes must be a list of names, got {self.classes!r}"
            ) from None
        object.__setattr__(self, "classes", classes)
        if not classes or any(not c for c in classes):
            raise DatasetError(
                f"synthetic classes {self.classes!r} contain an empty name; "
                f"choose from {', '.join(EXPRESSIONS)}"
            )
        unknown = [c for c in classes if c not in EXPRESSIONS]
        if unknown:
            raise DatasetError(
                f"unknown synthetic expression(s) {unknown}; supported: {', '.join(EXPRESSIONS)}"
            )
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        if dupes:
            raise DatasetError(f"synthetic classes name {dupes} more than once; list each once")
        for name, lo, hi in (
            ("train_per_class", 1, MAX_PER_CLASS),
            ("test_per_class", 1, MAX_PER_CLASS),
            ("image_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise DatasetError(f"synthetic {name} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise DatasetError(f"synthetic {name}={value} is out of range; use {lo}..{hi}")
            object.__setattr__(self, name, int(value))
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, (int, np.integer))
            or self.seed < 0
        ):
            raise DatasetError(f"synthetic seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))

    # Spec keys accepted after "synthetic:" and the field each one sets.
    SPEC_KEYS: ClassVar[dict[str, str]] = {
        "n": "train_per_class",
        "train": "train_per_class",
        "test": "test_per_class",
        "size": "image_size",
        "seed": "seed",
        "classes": "classes",
    }

    @classmethod
    def from_spec(cls, text: str) -> "SyntheticConfig":
        """Parse ``synthetic`` or ``synthetic:n=100,test=20,size=64,seed=3,classes=angry+happy``.

        Raises :class:`DatasetError` naming an unknown key or a bad value.
        """
        text = str(text).strip()
        head, sep, rest = text.partition(":")
        if head.strip().lower() != "synthetic":
            raise DatasetError(
                f"{text!r} is not a synthetic dataset spec; expected 'synthetic[:key=value,...]'"
            )
        kwargs: dict[str, Any] = {}
        keys = ", ".join(cls.SPEC_KEYS)
        for item in (p.strip() for p in rest.split(",")) if sep else ():
            if not item:
                continue
            key, eq, value = (s.strip() for s in item.partition("="))
            key = key.lower()
            if not eq or not value:
                raise DatasetError(f"synthetic spec item {item!r} needs key=value (keys: {keys})")
            if key not in cls.SPEC_KEYS:
                raise DatasetError(
                    f"unknown synthetic spec key {key!r} in {text!r}; known keys: {keys}"
                )
            name = cls.SPEC_KEYS[key]
            if name in kwargs:
                raise DatasetError(f"synthetic spec sets {key!r} ({name}) twice in {text!r}")
            if name == "classes":
                kwargs[name] = tuple(c for c in value.replace("+", " ").replace(";", " ").split())
            else:
                try:
                    kwargs[name] = int(value)
                except ValueError:
                    raise DatasetError(
                        f"synthetic spec {key}={value!r} is not an integer (in {text!r})"
                    ) from None
        return cls(**kwargs)

    def to_spec(self) -> str:
        """The spec text that :meth:`from_spec` turns back into this config."""
        return (
            f"synthetic:n={self.train_per_class},test={self.test_per_class},size={self.image_size},"
            f"seed={self.seed},classes={'+'.join(self.classes)}"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly fields plus the generator version (written to the marker file)."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["generator_version"] = GENERATOR_VERSION
        return d

    def cache_key(self) -> str:
        """A folder name that changes with every field and with ``GENERATOR_VERSION``."""
        return (
            f"v{GENERATOR_VERSION}-{'+'.join(self.classes)}-n{self.train_per_class}"
            f"-t{self.test_per_class}-s{self.image_size}-seed{self.seed}"
        )


# --------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class _Expression:
    """Mean facial-feature parameters of one expression, in face-width units (R).

    Per-sample jitter is added in :func:`_sample_expression`; means are far
    enough apart that the classes separate, jitter is wide enough that a
    model has to learn shapes rather than memorise one template.
    """

    brow_raise: float = 0.0  # + = brows higher
    brow_tilt: float = 0.0  # + = inner ends lower than outer (angry "V"), - = worried
    brow_arch: float = 0.04
    eye_open: float = 0.11  # upper lid height
    eye_lower: float = 0.075  # lower lid depth
    lid_inner: float = 0.0  # fraction of the upper lid pressed down at the inner corner
    lid_outer: float = 0.0  # fraction drooping at the outer corner
    cheek: float = 0.0  # lower lid pushed up (smiling eyes)
    mouth_w: float = 0.30  # half width
    mouth_corner: float = 0.0  # corner height: - = up (smile), + = down (frown)
    mouth_top: float = 0.0  # opening above the centre line
    mouth_bottom: float = 0.0  # opening below the centre line
    mouth_asym: float = 0.0  # one corner raised (sign chosen per sample)
    p_open: float = 0.0  # probability that the mouth is open
    teeth: float = 0.0  # fraction of the opening filled by upper teeth
    glabella: float = 0.0  # probability of frown lines between the brows
    nose_wrinkle: float = 0.0
    forehead: float = 0.0  # probability of raised-brow forehead lines
    tears: float = 0.0


_EXPRESSION_PARAMS: dict[str, _Expression] = {
    "neutral": _Expression(),
    "angry": _Expression(
        brow_raise=-0.07,
        brow_tilt=0.17,
        brow_arch=0.0,
        eye_open=0.10,
        eye_lower=0.06,
        lid_inner=0.45,
        mouth_w=0.26,
        mouth_corner=0.07,
        mouth_top=0.035,
        mouth_bottom=0.05,
        p_open=0.4,
        teeth=0.55,
        glabella=0.8,
    ),
    "happy": _Expression(
        brow_raise=0.03,
        brow_tilt=-0.02,
        brow_arch=0.07,
        eye_open=0.095,
        eye_lower=0.075,
        cheek=0.06,
        mouth_w=0.40,
        mouth_corner=-0.17,
        mouth_top=0.02,
        mouth_bottom=0.17,
        p_open=0.65,
        teeth=0.4,
    ),
    "sad": _Expression(
        brow_raise=0.02,
        brow_tilt=-0.15,
        brow_arch=-0.01,
        eye_open=0.09,
        eye_lower=0.07,
        lid_outer=0.4,
        mouth_w=0.27,
        mouth_corner=0.15,
        mouth_top=0.0,
        mouth_bottom=0.03,
        p_open=0.15,
        tears=0.25,
    ),
    "surprise": _Expression(
        brow_raise=0.15,
        brow_tilt=-0.03,
        brow_arch=0.11,
        eye_open=0.20,
        eye_lower=0.12,
        mouth_w=0.14,
        mouth_corner=0.0,
        mouth_top=0.13,
        mouth_bottom=0.21,
        p_open=1.0,
        forehead=0.6,
    ),
    "fear": _Expression(
        brow_raise=0.10,
        brow_tilt=-0.13,
        brow_arch=0.02,
        eye_open=0.19,
        eye_lower=0.11,
        mouth_w=0.37,
        mouth_corner=0.06,
        mouth_top=0.05,
        mouth_bottom=0.09,
        p_open=1.0,
        teeth=0.45,
        forehead=0.4,
    ),
    "disgust": _Expression(
        brow_raise=-0.04,
        brow_tilt=0.08,
        brow_arch=0.02,
        eye_open=0.075,
        eye_lower=0.06,
        lid_inner=0.2,
        cheek=0.035,
        mouth_w=0.28,
        mouth_corner=0.06,
        mouth_top=0.035,
        mouth_bottom=0.025,
        mouth_asym=0.13,
        p_open=0.6,
        teeth=0.8,
        nose_wrinkle=0.85,
        glabella=0.3,
    ),
}
assert set(_EXPRESSION_PARAMS) == set(EXPRESSIONS)

# Per-sample jitter (standard deviation, R units) of the continuous parameters.
_JITTER = {
    "brow_raise": 0.025,
    "brow_tilt": 0.035,
    "brow_arch": 0.02,
    "eye_open": 0.016,
    "eye_lower": 0.012,
    "lid_inner": 0.08,
    "lid_outer": 0.08,
    "cheek": 0.01,
    "mouth_w": 0.03,
    "mouth_corner": 0.03,
    "mouth_top": 0.015,
    "mouth_bottom": 0.02,
    "mouth_asym": 0.03,
    "teeth": 0.1,
}


def _sample_expression(expression: str, rng: np.random.Generator) -> dict[str, float]:
    """One sample's feature parameters: the expression's means plus jitter.

    Always makes the same number of draws, whatever the expression.
    """
    base = _EXPRESSION_PARAMS[expression]
    p = {}
    for f in fields(_Expression):
        mean = getattr(base, f.name)
        sd = _JITTER.get(f.name)
        p[f.name] = float(mean + rng.normal(0.0, sd)) if sd else float(mean)
    for k in ("eye_open", "eye_lower", "mouth_w", "lid_inner", "lid_outer", "cheek", "teeth"):
        p[k] = max(p[k], 0.0)
    p["eye_open"] = max(p["eye_open"], 0.045)
    p["mouth_w"] = max(p["mouth_w"], 0.1)
    is_open = rng.random() < base.p_open
    if not is_open:
        p["mouth_top"] = p["mouth_bottom"] = 0.0
    else:
        p["mouth_top"] = max(p["mouth_top"], 0.0)
        p["mouth_bottom"] = max(p["mouth_bottom"], 0.02)
    p["mouth_asym"] *= 1.0 if rng.random() < 0.5 else -1.0
    for k in ("glabella", "nose_wrinkle", "forehead", "tears"):
        p[k] = float(rng.random() < getattr(base, k))
    return p


# --------------------------------------------------------------------------- colours

_SKIN_TONES = np.array(
    [
        (255, 226, 204),
        (245, 205, 175),
        (234, 189, 145),
        (214, 160, 115),
        (184, 129, 88),
        (141, 92, 58),
        (104, 66, 44),
        (74, 48, 34),
    ],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [
        (20, 16, 14),
        (45, 30, 22),
        (78, 52, 34),
        (120, 84, 50),
        (196, 160, 100),
        (150, 70, 35),
        (160, 160, 160),
        (225, 215, 200),
    ],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array(
    [(70, 45, 25), (100, 65, 35), (60, 100, 150), (80, 120, 80), (40, 30, 25)],
    dtype=np.float64,
)


def _rgb(c: Any) -> tuple[int, int, int]:
    a = np.clip(np.asarray(c, dtype=np.float64), 0, 255).round().astype(int)
    return int(a[0]), int(a[1]), int(a[2])


def _mix(a: Any, b: Any, t: float) -> tuple[int, int, int]:
    return _rgb(np.asarray(a, float) * (1 - t) + np.asarray(b, float) * t)


def _random_colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return _rgb(rng.integers(lo, hi, 3))


# --------------------------------------------------------------------------- drawing


# Pose ranges: in-plane rotation (degrees, sd), scale, yaw-like squash and
# feature shift (R units), position offset (fraction of the image).
_POSE = {
    "angle_sd": 5.0,
    "scale": (0.88, 1.06),
    "squash": (0.84, 1.0),
    "shift_sd": 0.04,
    "offset": 0.045,
}


def _supersample(size: int) -> int:
    """Drawing scale: enough to antialias small images, cheap for large ones."""
    return 4 if size <= 48 else 3 if size <= 160 else 2


def _background(rng: np.random.Generator, s: int) -> Image.Image:
    """Flat colour, linear gradient or clutter of random shapes: the label never depends on it."""
    kind = rng.integers(0, 3)
    base = _random_colour(rng, 20, 240)
    if kind == 0:
        return Image.new("RGB", (s, s), base)
    if kind == 1:
        other = _random_colour(rng, 20, 240)
        angle = rng.uniform(0, 2 * math.pi)
        g = np.linspace(-1.0, 1.0, 16)
        xx, yy = np.meshgrid(g, g)
        t = np.clip((xx * math.cos(angle) + yy * math.sin(angle)) * 0.5 + 0.5, 0, 1)[..., None]
        arr = np.asarray(base, float) * (1 - t) + np.asarray(other, float) * t
        return Image.fromarray(arr.round().astype(np.uint8)).resize(
            (s, s), Image.Resampling.BILINEAR
        )
    img = Image.new("RGB", (s, s), base)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 14))):
        colour = _random_colour(rng, 10, 250)
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * s
        w, h = rng.uniform(0.08, 0.6, 2) * s
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.line(
                (x0, y0, x0 + w, y0 + h),
                fill=colour,
                width=max(1, int(rng.uniform(0.01, 0.05) * s)),
            )
    return img


class _Face:
    """Maps face coordinates ``(u, v)``, in units of the face half-width R, to canvas pixels.

    The pose (rotation, yaw-like horizontal squash, scale and position) is part
    of the map, so every stroke is drawn once, already in place: no layer has
    to be resampled, which keeps generation fast and edges crisp.
    """

    def __init__(
        self, cx: float, cy: float, r: float, shift: float, angle: float, squash: float
    ) -> None:
        self.cx, self.cy, self.r, self.shift = cx, cy, r, shift
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        self.m = (squash * c * r, -s * r, squash * s * r, c * r)

    def p(self, u: float, v: float, feature: bool = True) -> tuple[float, float]:
        """Pixel position; features slide with the yaw shift, the head outline does not."""
        if feature:
            u = u + self.shift
        m = self.m
        return (self.cx + m[0] * u + m[1] * v, self.cy + m[2] * u + m[3] * v)

    def pts(self, u: Any, v: Any, feature: bool = True) -> list[tuple[float, float]]:
        """Vectorised :meth:`p` for arrays of ``u`` and ``v``."""
        u = np.asarray(u, dtype=np.float64) + (self.shift if feature else 0.0)
        v = np.asarray(v, dtype=np.float64)
        m = self.m
        xs = self.cx + m[0] * u + m[1] * v
        ys = self.cy + m[2] * u + m[3] * v
        return list(zip(xs.tolist(), ys.tolist()))

    def w(self, units: float) -> int:
        """A line width of ``units`` R in pixels (at least one)."""
        return max(1, int(round(units * self.r)))

    def ellipse(
        self, u: float, v: float, hu: float, hv: float, feature: bool = True, n: int = 28
    ) -> list[tuple[float, float]]:
        """An ellipse as a polygon, so it rotates and squashes with the pose."""
        th = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
        return self.pts(u + hu * np.cos(th), v + hv * np.sin(th), feature)


def _bezier(
    a: tuple[float, float], b: tuple[float, float], c: tuple[float, float], n: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """A quadratic Bezier curve in face units, as (u, v) arrays."""
    t = np.linspace(0.0, 1.0, n)
    u = (1 - t) ** 2 * a[0] + 2 * (1 - t) * t * b[0] + t**2 * c[0]
    v = (1 - t) ** 2 * a[1] + 2 * (1 - t) * t * b[1] + t**2 * c[1]
    return u, v


def _draw_eye(
    img: Image.Image, f: _Face, side: int, e: dict[str, float], look: dict[str, Any]
) -> None:
    """One eye: an almond between two lid curves, the iris clipped to it, lashes on the upper lid.

    ``side`` is -1 for the eye on the image's left, +1 for the right; the inner
    corner is the one nearer the nose.  Angry lids press down at the inner
    corner, sad ones droop at the outer corner, smiling cheeks push the lower
    lid up, fear and surprise open the eye wide.
    """
    ex, ey, ew = side * look["eye_dx"], look["eye_y"], look["eye_w"]
    t = np.linspace(-1.0, 1.0, 21)
    q = -t * side  # +1 at the inner corner
    shape = (1.0 - t**2) ** 0.6
    lid = np.clip(1.0 - e["lid_inner"] * (1 + q) / 2 - e["lid_outer"] * (1 - q) / 2, 0.12, 1.0)
    corner = 0.04 * e["lid_outer"] * (1 - q) / 2  # drooping outer corner
    upper_v = ey - e["eye_open"] * shape * lid + corner
    lower_v = ey + (e["eye_lower"] - e["cheek"]) * shape + corner
    lower_v = np.maximum(lower_v, upper_v + 0.012 * shape)
    us = ex + t * ew
    upper = f.pts(us, upper_v)
    lower = f.pts(us, lower_v)
    outline = upper + lower[::-1]
    xs = [p[0] for p in outline]
    ys = [p[1] for p in outline]
    x0, y0 = int(math.floor(min(xs))) - 2, int(math.floor(min(ys))) - 2
    x1, y1 = int(math.ceil(max(xs))) + 3, int(math.ceil(max(ys))) + 3
    crop = Image.new("RGB", (x1 - x0, y1 - y0), look["sclera"])
    mask = Image.new("L", crop.size, 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in outline], fill=255)
    d = ImageDraw.Draw(crop)
    ix, iy = f.p(ex + look["gaze_u"], ey + look["gaze_v"])
    ri, rp = look["iris_r"] * f.r, look["iris_r"] * 0.45 * f.r
    d.ellipse((ix - x0 - ri, iy - y0 - ri, ix - x0 + ri, iy - y0 + ri), fill=look["iris"])
    d.ellipse((ix - x0 - rp, iy - y0 - rp, ix - x0 + rp, iy - y0 + rp), fill=(12, 10, 10))
    hx, hy, rh = ix - x0 - 0.35 * ri, iy - y0 - 0.35 * ri, 0.22 * ri
    d.ellipse((hx - rh, hy - rh, hx + rh, hy + rh), fill=(250, 250, 250))
    img.paste(crop, (x0, y0), mask)
    draw = ImageDraw.Draw(img)
    draw.line(upper, fill=look["lash"], width=f.w(0.04), joint="curve")
    draw.line(lower, fill=look["line"], width=f.w(0.018), joint="curve")
    if e["cheek"] > 0.03:  # smile lines under the eye
        draw.line(f.pts(us, lower_v + 0.07), fill=look["line"], width=f.w(0.012))


def _draw_brow(
    draw: ImageDraw.ImageDraw, f: _Face, side: int, e: dict[str, float], look: dict[str, Any]
) -> None:
    """A brow from its inner to its outer end; tilt and height carry most of angry/sad/fear."""
    base = look["eye_y"] - 0.27 - e["brow_raise"]
    inner = (side * 0.16, base + e["brow_tilt"] / 2)
    outer = (side * 0.66, base - e["brow_tilt"] / 2 + 0.03)
    mid = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2 - e["brow_arch"] - 0.02)
    draw.line(
        f.pts(*_bezier(inner, mid, outer)),
        fill=look["brow"],
        width=f.w(look["brow_w"]),
        joint="curve",
    )


def _draw_mouth(
    draw: ImageDraw.ImageDraw, f: _Face, e: dict[str, float], look: dict[str, Any]
) -> None:
    """Upper and lower lip curves sharing their corners; open mouths show teeth.

    Corners up is a smile, down a frown; a tall opening is surprise, a wide
    shallow one with teeth a grimace; a raised corner on one side is disgust.
    """
    my, w = look["mouth_y"], e["mouth_w"]
    t = np.linspace(-1.0, 1.0, 25)
    corner = (e["mouth_corner"] + e["mouth_asym"] * t) * t**2
    bulge = 1.0 - t**2
    upper_v = my + corner - e["mouth_top"] * bulge
    lower_v = my + corner + e["mouth_bottom"] * bulge
    us = t * w
    if e["mouth_top"] + e["mouth_bottom"] < 0.01:
        draw.line(f.pts(us, my + corner), fill=look["lip"], width=f.w(0.055), joint="curve")
        return
    upper = f.pts(us, upper_v)
    lower = f.pts(us, lower_v)
    draw.polygon(upper + lower[::-1], fill=(70, 18, 24))
    if e["teeth"] > 0.05:
        teeth_v = np.minimum(upper_v + e["teeth"] * (e["mouth_top"] + e["mouth_bottom"]), lower_v)
        draw.polygon(upper + f.pts(us, teeth_v)[::-1], fill=(240, 236, 225))
    lip_w = f.w(0.045)
    draw.line(upper, fill=look["lip"], width=lip_w, joint="curve")
    draw.line(lower, fill=look["lip"], width=lip_w, joint="curve")


def _head_outline(
    f: _Face, look: dict[str, Any], scale: float = 1.0, dv: float = 0.0
) -> list[tuple[float, float]]:
    """An egg-shaped head: an ellipse narrowed towards the chin by the jaw parameter."""
    th = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    s, c = np.sin(th), np.cos(th)
    u = c * scale * (1.0 - look["jaw"] * np.clip(s, 0, None) ** 1.5)
    v = s * look["head_h"] * scale + dv
    return f.pts(u, v, feature=False)


def _draw_person(img: Image.Image, rng: np.random.Generator, f: _Face, expression: str) -> None:
    """Hair, head, neck, shoulders and facial features of one random person."""
    # Identity first, in a fixed order, so its distribution is the same for
    # every expression; the expression's own parameters are drawn last.
    skin_t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(skin_t), len(_SKIN_TONES) - 2)
    skin = _rgb(
        _SKIN_TONES[i] * (1 - (skin_t - i))
        + _SKIN_TONES[i + 1] * (skin_t - i)
        + rng.normal(0, 6, 3)
    )
    hair = _rgb(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0, 8, 3))
    hair_style = int(rng.integers(0, 4))  # 0 bald, 1 short, 2 long, 3 curly
    shirt = _random_colour(rng, 15, 240)
    look: dict[str, Any] = {
        "jaw": rng.uniform(0.08, 0.26),
        "head_h": rng.uniform(1.22, 1.36),
        "eye_y": rng.normal(-0.1, 0.03),
        "eye_dx": rng.normal(0.40, 0.025),
        "eye_w": rng.normal(0.19, 0.012),
        "iris_r": rng.normal(0.085, 0.006),
        "gaze_u": rng.normal(0, 0.025),
        "gaze_v": rng.normal(0, 0.012),
        "mouth_y": rng.normal(0.68, 0.035),
        "nose_w": rng.normal(0.13, 0.015),
        "brow_w": rng.uniform(0.05, 0.09),
        "iris": _rgb(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]),
        "sclera": _rgb(np.array([245, 243, 238]) + rng.normal(0, 4, 3)),
    }
    dark = _mix(skin, (20, 10, 10), 0.55)
    look["line"] = dark
    look["lash"] = _mix(hair, (15, 10, 10), 0.6)
    look["brow"] = _mix(hair, (25, 18, 15), 0.45 if hair_style else 0.7)
    look["lip"] = _mix(skin, (140, 45, 55), rng.uniform(0.35, 0.6))
    hairline = rng.uniform(-0.85, -0.6)
    part = rng.uniform(-0.12, 0.12)
    glasses = rng.random() < 0.12
    glasses_colour = _random_colour(rng, 0, 120)
    e = _sample_expression(expression, rng)

    draw = ImageDraw.Draw(img)
    hh = look["head_h"]
    shade = _mix(skin, (0, 0, 0), 0.12)
    if hair_style == 2:  # long hair behind the head
        draw.polygon(f.ellipse(0, 0.35, 1.28, hh + 0.55, feature=False, n=48), fill=hair)
    draw.polygon(f.pts([-0.4, 0.4, 0.4, -0.4], [0.8, 0.8, 2.2, 2.2], feature=False), fill=shade)
    draw.polygon(f.ellipse(0, 2.55, 1.9, 0.95, feature=False, n=48), fill=shirt)
    draw.polygon(f.ellipse(0, 1.62, 0.42, 0.16, feature=False), fill=shade)
    for side in (-1, 1):  # ears
        draw.polygon(
            f.ellipse(side * 0.97, -0.02, 0.15, 0.24, feature=False, n=16),
            fill=_mix(skin, (0, 0, 0), 0.06),
        )
    draw.polygon(_head_outline(f, look), fill=skin)
    if hair_style in (1, 2):  # a cap of hair down to a curved hairline
        th = np.linspace(math.pi * 0.97, math.pi * 2.03, 30)
        cap_u = np.cos(th) * 1.05
        cap_v = np.sin(th) * hh * 1.05 - 0.04
        line_u = np.linspace(1.0, -1.0, 15)
        line_v = hairline + 0.55 * line_u**2 - part * line_u
        draw.polygon(f.pts(np.r_[cap_u, line_u], np.r_[cap_v, line_v], feature=False), fill=hair)
    elif hair_style == 3:  # curls
        for a in np.linspace(math.pi * 1.05, math.pi * 1.95, 9):
            u, v = math.cos(a) * 0.95, math.sin(a) * hh * 0.92
            draw.polygon(f.ellipse(u, v, 0.3, 0.3, feature=False, n=16), fill=hair)

    for side in (-1, 1):
        _draw_eye(img, f, side, e, look)
    draw = ImageDraw.Draw(img)
    for side in (-1, 1):
        _draw_brow(draw, f, side, e, look)
    ny, nw = 0.32, look["nose_w"]
    draw.line(
        f.pts(*_bezier((-nw, ny - 0.04), (0, ny + 0.07), (nw, ny - 0.04), 9)),
        fill=dark,
        width=f.w(0.025),
    )
    for side in (-1, 1):
        draw.polygon(
            f.ellipse(side * nw * 0.55, ny - 0.02, 0.035, 0.022, n=10),
            fill=_mix(skin, (0, 0, 0), 0.5),
        )
    draw.line(
        f.pts([0.06, 0.09], [look["eye_y"] + 0.1, ny - 0.08]),
        fill=_mix(skin, (0, 0, 0), 0.22),
        width=f.w(0.02),
    )
    _draw_mouth(draw, f, e, look)

    wrinkle = _mix(skin, (0, 0, 0), 0.35)
    if e["glabella"]:  # vertical frown lines between the brows
        bv = look["eye_y"] - 0.2 - e["brow_raise"]
        for side in (-1, 1):
            draw.line(
                f.pts([side * 0.05, side * 0.07], [bv - 0.04, bv + 0.07]),
                fill=wrinkle,
                width=f.w(0.018),
            )
    if e["nose_wrinkle"]:  # wrinkled nose bridge and deep folds beside the nose
        for k in (0, 1):
            v = look["eye_y"] + 0.08 + 0.07 * k
            draw.line(
                f.pts([-0.1, 0.0, 0.1], [v, v - 0.03, v]),
                fill=wrinkle,
                width=f.w(0.018),
                joint="curve",
            )
        for side in (-1, 1):
            draw.line(
                f.pts(
                    *_bezier(
                        (side * 0.2, ny - 0.05),
                        (side * 0.3, ny + 0.12),
                        (side * 0.36, ny + 0.25),
                        8,
                    )
                ),
                fill=wrinkle,
                width=f.w(0.02),
                joint="curve",
            )
    if e["forehead"]:  # raised-brow forehead lines
        fv = look["eye_y"] - 0.5 - e["brow_raise"]
        for k in range(2):
            v = fv - 0.1 * k
            draw.line(
                f.pts(*_bezier((-0.4, v + 0.03), (0, v - 0.04), (0.4, v + 0.03), 9)),
                fill=wrinkle,
                width=f.w(0.016),
                joint="curve",
            )
    if e["tears"]:
        draw.polygon(
            f.ellipse(-look["eye_dx"] + 0.05, look["eye_y"] + 0.17, 0.04, 0.065, n=12),
            fill=(170, 210, 240),
        )
    if glasses:
        gw = f.w(0.035)
        for side in (-1, 1):
            ring = f.ellipse(side * look["eye_dx"], look["eye_y"] + 0.01, 0.27, 0.21)
            draw.line(ring + ring[:1], fill=glasses_colour, width=gw, joint="curve")
        draw.line(
            f.pts([-look["eye_dx"] + 0.27, look["eye_dx"] - 0.27], [look["eye_y"]] * 2),
            fill=glasses_colour,
            width=gw,
        )


def render_face(expression: str, rng: np.random.Generator, size: int) -> Image.Image:
    """Draw one RGB face showing ``expression``, with random identity, pose, light and background.

    Drawn at 2-4x ``size`` and box-reduced, so strokes are antialiased.  The
    same ``rng`` state gives the same pixels.
    """
    if expression not in _EXPRESSION_PARAMS:
        raise DatasetError(
            f"unknown expression {expression!r}; supported: {', '.join(EXPRESSIONS)}"
        )
    if isinstance(size, bool) or not MIN_IMAGE_SIZE <= int(size) <= MAX_IMAGE_SIZE:
        raise DatasetError(
            f"image size {size!r} is out of range; use {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}"
        )
    size = int(size)
    ss = _supersample(size)
    s = size * ss
    # Pose, scale, position, lighting and noise are drawn before anything that
    # depends on the expression, so they are identically distributed across classes.
    angle = float(np.clip(rng.normal(0, _POSE["angle_sd"]), -15, 15))
    scale = rng.uniform(*_POSE["scale"])
    squash = rng.uniform(*_POSE["squash"])  # yaw-like horizontal foreshortening...
    shift = rng.normal(0, _POSE["shift_sd"])  # ...with the features sliding towards the turned side
    offset = rng.uniform(-_POSE["offset"], _POSE["offset"], 2) * s
    light_gain = rng.uniform(0.7, 1.2)
    light_slope = rng.uniform(-0.45, 0.45)
    light_dir = rng.uniform(0, 2 * math.pi)
    tint = rng.normal(0, 0.05)
    noise_sd = rng.uniform(0, 9)
    img = _background(rng, s)
    face = _Face(s / 2 + offset[0], 0.47 * s + offset[1], 0.28 * s * scale, shift, angle, squash)
    _draw_person(img, rng, face, expression)
    img = img.reduce(ss)

    arr = np.asarray(img, dtype=np.float32)
    g = (np.arange(size, dtype=np.float32) - size / 2) / size
    ramp = g[None, :] * math.cos(light_dir) + g[:, None] * math.sin(light_dir)
    gain = (light_gain + light_slope * ramp)[..., None] * np.array(
        [1 + tint, 1.0, 1 - tint], np.float32
    )
    arr = arr * gain
    if noise_sd > 0.5:
        arr = arr + rng.normal(0.0, noise_sd, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- generation


def image_seed(seed: int, split: str, expression: str, index: int) -> np.random.SeedSequence:
    """The random stream of one image.

    Equal to ``SeedSequence(seed).spawn(2)[split].spawn(7)[expression].spawn(index + 1)[index]``
    (built directly from the spawn key, which is what ``spawn`` does), so train
    and test are independent streams and no image depends on any other.
    """
    return np.random.SeedSequence(
        seed, spawn_key=(_SPLIT_KEYS[split], EXPRESSIONS.index(expression), int(index))
    )


def generate_synthetic(config: SyntheticConfig, out_dir: Path) -> Path:
    """Write ``out_dir/{train,test}/<class>/<class>_<idx:05d>.png`` for ``config``.

    Same config, byte-identical files.  Existing files are overwritten; use
    :func:`materialize_synthetic` for a cached, crash-safe copy.
    """
    out_dir = Path(out_dir)
    counts = {"train": config.train_per_class, "test": config.test_per_class}
    start = time.perf_counter()
    total = 0
    for split in SPLITS:
        for expression in config.classes:
            folder = out_dir / split / expression
            folder.mkdir(parents=True, exist_ok=True)
            for idx in range(counts[split]):
                rng = np.random.default_rng(image_seed(config.seed, split, expression, idx))
                img = render_face(expression, rng, config.image_size)
                img.save(folder / f"{expression}_{idx:05d}.png", format="PNG", optimize=False)
                total += 1
    logger.info(
        "generated %d synthetic images in %.1fs into %s",
        total,
        time.perf_counter() - start,
        out_dir,
    )
    return out_dir


def _is_complete(folder: Path, config: SyntheticConfig) -> bool:
    marker = folder / MARKER_NAME
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("cache_key") == config.cache_key()


def materialize_synthetic(config: SyntheticConfig, cache_root: Path) -> Path:
    """Return ``cache_root/<config.cache_key()>/``, generating it the first time.

    The set is generated into a uniquely named temporary sibling, the marker
    file (``config.json``) is written last, then the folder is renamed into
    place in one step: a crash never leaves a half-written set where it would
    be reused, and when two processes race the loser deletes its copy and uses
    the winner's.
    """
    cache_root = Path(cache_root)
    key = config.cache_key()
    final = cache_root / key
    if _is_complete(final, config):
        logger.debug("reusing synthetic dataset %s", final)
        return final
    def build(tmp: Path) -> None:
        generate_synthetic(config, tmp)
        meta = dict(config.as_dict(), cache_key=key, spec=config.to_spec())
        (tmp / MARKER_NAME).write_text(json.dumps(meta, indent=2))  # written last: marks the set complete

    try:
        atomic_folder(final, build, lambda folder: _is_complete(folder, config))
    except OSError as exc:
        raise DatasetError(f"could not move the generated synthetic dataset into {final} ({exc}); "
                           "delete that folder and retry") from exc
    if not _is_complete(final, config):
        raise DatasetError(
            f"could not create the synthetic dataset in {final}; check that the folder is writable"
        )
    logger.info("synthetic dataset %s ready in %s", config.to_spec(), final)
    return final
