"""Procedural faces: a data set that needs no download.

Face data sets and model weights cannot be fetched on every machine (CI, the
offline demo), so raydino draws its own. Each face is a few PIL shapes with
attributes that a caption names, which is what text control needs: the
attributes are visible, so a model can learn them and a test can measure
them. Everything is deterministic in ``(seed, index)``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

SKIN_TONES = {
    "pale": (242, 214, 196),
    "light": (230, 188, 152),
    "tan": (198, 144, 104),
    "brown": (150, 102, 70),
    "dark": (96, 62, 42),
}
HAIR_COLOURS = {
    "black": (25, 22, 20),
    "brown": (105, 62, 30),
    "blonde": (232, 200, 110),
    "red": (196, 60, 28),
    "gray": (160, 160, 160),
    "blue": (40, 90, 210),
}
EYE_COLOURS = {"brown": (92, 52, 24), "blue": (50, 110, 200), "green": (50, 140, 70)}
HAIR_STYLES = ("short", "long", "bald", "bun")
BACKGROUNDS = {
    "white": (235, 235, 232),
    "sky": (150, 190, 230),
    "mint": (170, 220, 190),
    "peach": (240, 200, 170),
    "lilac": (200, 180, 225),
    "slate": (90, 100, 115),
}
SUPERSAMPLE = 2
PARTS = ("background", "skin", "hair", "eyes", "mouth", "glasses", "clothing")

METADATA = "metadata.parquet"  # a face folder's attributes and captions, one row per file


@dataclass(frozen=True)
class FaceAttributes:
    """Everything that decides how one face looks."""

    skin: str
    hair_colour: str
    hair_style: str
    eye_colour: str
    glasses: bool
    smile: bool
    background: str
    dx: float
    dy: float
    scale: float
    angle: float
    light_angle: float
    light_strength: float

    def caption(self) -> str:
        mood = "smiling" if self.smile else "neutral"
        hair = "a bald head" if self.hair_style == "bald" else f"{self.hair_style} {self.hair_colour} hair"
        extra = " and glasses" if self.glasses else ""
        return f"a {mood} face with {hair}, {self.eye_colour} eyes{extra}"


def sample_attributes(rng: np.random.Generator) -> FaceAttributes:
    pick = lambda names: str(rng.choice(list(names)))  # noqa: E731
    return FaceAttributes(
        skin=pick(SKIN_TONES),
        hair_colour=pick(HAIR_COLOURS),
        hair_style=str(rng.choice(HAIR_STYLES, p=[0.4, 0.35, 0.1, 0.15])),
        eye_colour=pick(EYE_COLOURS),
        glasses=bool(rng.random() < 0.3),
        smile=bool(rng.random() < 0.5),
        background=pick(BACKGROUNDS),
        dx=float(rng.uniform(-0.04, 0.04)),
        dy=float(rng.uniform(-0.03, 0.03)),
        scale=float(rng.uniform(0.92, 1.06)),
        angle=float(rng.uniform(-8, 8)),
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.25)),
    )


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)  # type: ignore[return-value]


def _paint(draw: ImageDraw.ImageDraw, shape: str, xy: object, colour: object, ring: bool = False, **kw) -> None:
    """One PIL shape, filled with ``colour`` (or outlined, for ``ring``)."""
    getattr(draw, shape)(xy, **({"outline": colour} if ring else {"fill": colour}), **kw)


def _layout(attrs: FaceAttributes, s: int, paint: Callable[..., None]) -> tuple[float, float]:
    """Every shape of one face, in drawing order, laid out in a unit square scaled to ``s`` px.

    ``paint(shape, xy, part, colour, **kw)`` draws one shape; the colour image
    and the part map both come from this one layout, so they cannot disagree.
    Returns the centre the face is rotated about.
    """
    cx, cy, k = (0.5 + attrs.dx) * s, (0.52 + attrs.dy) * s, attrs.scale * s

    def pt(x: float, y: float) -> tuple[float, float]:
        return (cx + x * k, cy + y * k)

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (*pt(x0, y0), *pt(x1, y1))

    skin, hair = SKIN_TONES[attrs.skin], HAIR_COLOURS[attrs.hair_colour]
    shirt = _shade(BACKGROUNDS[attrs.background], 0.55)
    if attrs.hair_style == "long":
        paint("rounded_rectangle", box(-0.30, -0.30, 0.30, 0.36), "hair", hair, radius=0.2 * k)
    paint("ellipse", box(-0.40, 0.30, 0.40, 0.80), "clothing", shirt)  # shoulders
    paint("rectangle", box(-0.08, 0.16, 0.08, 0.38), "skin", _shade(skin, 0.9))  # neck
    paint("ellipse", box(-0.27, -0.04, -0.19, 0.10), "skin", _shade(skin, 0.95))  # ears
    paint("ellipse", box(0.19, -0.04, 0.27, 0.10), "skin", _shade(skin, 0.95))
    paint("ellipse", box(-0.22, -0.30, 0.22, 0.30), "skin", skin)  # face
    if attrs.hair_style in ("short", "long", "bun"):
        paint("chord", box(-0.235, -0.34, 0.235, 0.06), "hair", hair, start=180, end=360)
        paint("rectangle", box(-0.235, -0.16, -0.19, 0.02), "hair", hair)
        paint("rectangle", box(0.19, -0.16, 0.235, 0.02), "hair", hair)
    if attrs.hair_style == "bun":
        paint("ellipse", box(-0.09, -0.46, 0.09, -0.29), "hair", hair)
    bald = attrs.hair_style == "bald"
    brow, brow_part = (_shade(skin, 0.6), "skin") if bald else (hair, "hair")
    iris = EYE_COLOURS[attrs.eye_colour]
    for side in (-1, 1):
        ex = side * 0.09
        paint("ellipse", box(ex - 0.055, -0.035, ex + 0.055, 0.025), "eyes", (250, 250, 250))
        paint("ellipse", box(ex - 0.028, -0.033, ex + 0.028, 0.023), "eyes", iris)
        paint("ellipse", box(ex - 0.012, -0.017, ex + 0.012, 0.007), "eyes", (10, 10, 10))
        paint("line", [pt(ex - 0.06, -0.075), pt(ex + 0.06, -0.085)], brow_part, brow, width=max(2, int(0.018 * k)))
        if attrs.glasses:
            paint("ellipse", box(ex - 0.075, -0.07, ex + 0.075, 0.06), "glasses", (20, 20, 20), ring=True,
                  width=max(2, int(0.014 * k)))
    if attrs.glasses:
        paint("line", [pt(-0.015, -0.01), pt(0.015, -0.01)], "glasses", (20, 20, 20), width=max(2, int(0.012 * k)))
    paint("polygon", [pt(0, 0.02), pt(-0.03, 0.11), pt(0.03, 0.11)], "skin", _shade(skin, 0.8))  # nose
    lips = (170, 60, 60)
    if attrs.smile:
        paint("chord", box(-0.09, 0.10, 0.09, 0.21), "mouth", lips, start=0, end=180)
        paint("chord", box(-0.07, 0.11, 0.07, 0.17), "mouth", (250, 250, 250), start=0, end=180)
    else:
        paint("rounded_rectangle", box(-0.075, 0.165, 0.075, 0.19), "mouth", lips, radius=0.01 * k)
    return cx, cy


def render_face(attrs: FaceAttributes, size: int = 256, omit: Collection[str] = ()) -> Image.Image:
    """Draw one face at ``SUPERSAMPLE`` times the size, then blur and downsample (antialiasing).

    ``omit``: parts whose shapes are not drawn, so what lies under them shows
    (skin where the eyes were): the same face without its eyes, mouth and
    glasses is what a reconstruction that leaves them out would look like
    (``raydino.evaluation.part_figures``).
    """
    if unknown := set(omit) - set(PARTS):
        raise ValueError(f"unknown parts {sorted(unknown)}: parts are {PARTS}")
    s = size * SUPERSAMPLE
    img = Image.new("RGB", (s, s), BACKGROUNDS[attrs.background])
    draw = ImageDraw.Draw(img)

    def paint(shape: str, xy: object, part: str, colour: object, **kw) -> None:
        if part not in omit:
            _paint(draw, shape, xy, colour, **kw)

    centre = _layout(attrs, s, paint)
    img = img.rotate(attrs.angle, resample=Image.BILINEAR, center=centre, fillcolor=BACKGROUNDS[attrs.background])
    img = img.filter(ImageFilter.GaussianBlur(SUPERSAMPLE * 0.6)).resize((size, size), Image.LANCZOS)
    return _light(img, attrs)


def render_parts(attrs: FaceAttributes, size: int = 256) -> np.ndarray:
    """The part of every pixel of ``render_face(attrs, size)``: uint8 ``[size, size]`` indices into ``PARTS``.

    What the face generator knows and a network must learn to see: the
    supervision of the tiny encoders and the labels of their patch probes.
    """
    s = size * SUPERSAMPLE
    img = Image.new("L", (s, s), PARTS.index("background"))
    draw = ImageDraw.Draw(img)
    centre = _layout(attrs, s, lambda shape, xy, part, colour, **kw: _paint(draw, shape, xy, PARTS.index(part), **kw))
    img = img.rotate(attrs.angle, resample=Image.NEAREST, center=centre, fillcolor=PARTS.index("background"))
    return np.asarray(img.resize((size, size), Image.NEAREST), dtype=np.uint8)


def _light(img: Image.Image, attrs: FaceAttributes) -> Image.Image:
    """A soft directional light, so colour is not a constant per region."""
    a = np.asarray(img, dtype=np.float32)
    n = a.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] / (n - 1) - 0.5
    ramp = np.cos(attrs.light_angle) * xx + np.sin(attrs.light_angle) * yy
    a *= (1.0 + attrs.light_strength * ramp)[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def face(seed: int, index: int, size: int = 256) -> tuple[Image.Image, FaceAttributes]:
    """The face number ``index`` of the data set made with ``seed``."""
    attrs = sample_attributes(np.random.default_rng([seed, index]))
    return render_face(attrs, size), attrs


def write_faces(out: str | Path, count: int, seed: int = 0, size: int = 256) -> Path:
    """Write ``count`` PNG faces and ``metadata.parquet`` (file, attributes, caption)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        img, attrs = face(seed, i, size)
        name = f"face_{i:06d}.png"
        img.save(out / name, compress_level=1)
        rows.append({"file": name, **asdict(attrs), "caption": attrs.caption()})
    pq.write_table(pa.Table.from_pylist(rows), out / METADATA)
    return out
