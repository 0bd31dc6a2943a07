"""Turn each image file into a square RGB crop, or a reason (listing a source: ``sources.py``).

Real image folders hold more than clean RGB JPEGs: phone photos that rely on
EXIF rotation, CMYK scans, palette and 16-bit PNGs, transparent cut-outs,
stray text files, truncated downloads and the odd decompression bomb. Every
file either becomes one ``uint8 [S, S, 3]`` crop or a :class:`BadImage` with a
short reason, so one bad file costs one failure record, never a job.

Both readers here are pure (no Ray): the Ray Data stages in ``extract`` call
them, and tests call them directly.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from raydino.data.sources import open_source

# Transparent pixels are composited on white: the usual background of cut-outs
# and product shots, and fixed, so the same file always gives the same pixels.
BACKGROUND = (255, 255, 255)


class BadImage(Exception):
    """A file that gives no image; ``kind`` groups failures, ``str()`` is the full reason."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class UnreadableImage(ValueError):
    """An image file :func:`read_image` cannot use: the message names it, ``kind`` groups the reason."""

    def __init__(self, path: str | Path, kind: str, reason: object):
        super().__init__(f"cannot read image {path}: {reason}")
        self.kind = kind


def square_crop(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shortest side to ``size`` (antialiased) and centre-crop: uint8 HxWx3."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.LANCZOS, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _is_sixteen_bit(img: Image.Image) -> bool:
    """16-bit grayscale: ``I;16*`` modes, and PNG's ``I`` (older Pillow opens 16-bit PNGs so)."""
    return img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG")


def _to_rgb(img: Image.Image, sixteen_bit: bool) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, with transparency composited on :data:`BACKGROUND`.

    16-bit grayscale is scaled to 8 bits (PIL's own conversion clips it at
    255, turning most of the image white); other modes convert as PIL does.
    """
    if sixteen_bit:
        values = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, size: int, *, min_side: int, max_pixels: int) -> np.ndarray:
    """File bytes -> ``uint8 [size, size, 3]``: the square crop every level starts from.

    Order matters for safety and speed: the header is read first and the
    pixel count checked before any pixel is decoded (a bomb is refused
    without being decompressed); JPEGs are then decoded at the largest DCT
    reduction (``draft``: 1/2, 1/4 or 1/8) whose result still covers
    ``size``, which saves most of the decode time of large photos; EXIF
    orientation is applied before the crop. Raises :class:`BadImage`.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():  # our own max_pixels governs, checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadImage("too large", str(exc)) from None
    except UnidentifiedImageError:
        raise BadImage("not an image", f"no known image format starts with {data[:8]!r}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage("not an image", str(exc) or type(exc).__name__) from None
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage("too large", f"{w}x{h} is over max_pixels={max_pixels}")
    if min(w, h) < min_side:
        raise BadImage("too small", f"{w}x{h}, shortest side under min_side={min_side}")
    try:
        sixteen_bit = _is_sixteen_bit(img)
        img.draft(None, (size, size))
        img.load()
        img = _to_rgb(ImageOps.exif_transpose(img), sixteen_bit)
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as exc:
        raise BadImage("corrupt", str(exc) or type(exc).__name__) from None
    return square_crop(img, size)


def read_image(path: str | Path, size: int, *, min_side: int = 1, max_pixels: int = 2**62) -> np.ndarray:
    """One image file or URI -> the ``uint8 [size, size, 3]`` crop extraction makes of it.

    The one reader outside extraction: sampling, evaluation, the held-out
    figures, the tiny CLIP and the check of ``--images`` see pixels through
    :func:`decode_image` exactly as the pyramid's did, whatever the format.
    Raises :class:`UnreadableImage` naming the file.
    """
    fs, fs_path, _ = open_source(str(path))
    try:
        with fs.open_input_stream(fs_path) as stream:
            data = stream.read()
        return decode_image(data, size, min_side=min_side, max_pixels=max_pixels)
    except BadImage as exc:
        raise UnreadableImage(path, exc.kind, exc) from None
    except OSError as exc:
        raise UnreadableImage(path, "unreadable", exc) from None
