"""Find the images of a source and turn each one into a square RGB crop, or a reason.

Real image folders hold more than clean RGB JPEGs: phone photos that rely on
EXIF rotation, CMYK scans, palette and 16-bit PNGs, transparent cut-outs,
stray text files, truncated downloads and the odd decompression bomb. Every
file either becomes one ``uint8 [S, S, 3]`` crop or a :class:`BadImage` with a
short reason, so one bad file costs one failure record, never a job.

Both functions here are pure (no Ray): the Ray Data stages in ``extract`` call
them, and tests call them directly.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, ImageOps, UnidentifiedImageError


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Transparent pixels are composited on white: the usual background of cut-outs
# and product shots, and fixed, so the same file always gives the same pixels.
BACKGROUND = (255, 255, 255)
GLOB_CHARS = "*?["


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


def relative_path(root: str, path: str) -> str:
    """``path`` under the source's folder ``root``, ``/``-separated (its name when it is not under it)."""
    return path[len(root):].lstrip("/") if root and path.startswith(root) else PurePosixPath(path).name


@dataclass
class Listing:
    """The files a source names: image candidates, what was skipped by extension, and what could not be listed.

    Every entry under the source ends up in exactly one of the three, so the
    manifest can account for each file (a dangling symlink is a failure, not
    a silent gap).
    """

    filesystem: pafs.FileSystem
    prefix: str  # prepended to filesystem paths to show them (``s3://``; empty for local files)
    root: str = ""  # the folder paths are relative to (for the held-out split)
    images: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)  # extension -> count
    failures: list[dict[str, str]] = field(default_factory=list)  # entries found but not readable as files

    def display(self, path: str) -> str:
        return self.prefix + path

    def relative(self, path: str) -> str:
        return relative_path(self.root, path)


@dataclass(frozen=True)
class Split:
    """One side of the deterministic train / held-out split of a source.

    A file's side depends only on the hash of its path relative to the
    source: the ``k`` files with the smallest hashes are held out, with
    ``k = ceil(fraction * N)`` raised to ``min_count`` and capped at a third
    of the files, so training always keeps a clear majority.
    """

    part: str  # "train" or "holdout"
    fraction: float
    min_count: int

    def __post_init__(self) -> None:
        if self.part not in ("train", "holdout"):
            raise ValueError(f"split part must be 'train' or 'holdout', not {self.part!r}")
        if not 0 <= self.fraction < 1:
            raise ValueError(f"data.holdout_fraction must be in [0, 1), not {self.fraction}")

    def held_out_count(self, n: int) -> int:
        return min(max(math.ceil(self.fraction * n), self.min_count), n // 3)

    def apply(self, listing: Listing) -> dict:
        """Keep this side's images in ``listing``; return the split as the manifest records it."""
        def key(path: str) -> str:
            return hashlib.sha1(listing.relative(path).encode("utf-8")).hexdigest()

        by_hash = sorted(listing.images, key=key)
        k = self.held_out_count(len(by_hash))
        held = set(by_hash[:k])
        listing.images = sorted(p for p in listing.images if (p in held) == (self.part == "holdout"))
        return {"part": self.part, "holdout_fraction": self.fraction, "holdout_min": self.min_count,
                "files_total": len(by_hash), "files_held_out": k,
                "rule": "the k files with the smallest sha1(relative path) are held out, "
                        "k = min(max(ceil(fraction * N), holdout_min), N // 3)"}


def _open_source(src: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, filesystem path, display prefix) of a folder, glob or URI.

    Only the scheme and authority go through ``FileSystem.from_uri``: the rest
    of the path is used as is, so spaces and non-ASCII names need no
    percent-encoding.
    """
    if "://" not in src or src.startswith("file://"):
        path = Path(src.removeprefix("file://")).expanduser()
        return pafs.LocalFileSystem(), str(path.absolute()), ""
    scheme, rest = src.split("://", 1)
    authority, _, key = rest.partition("/")
    fs, base = pafs.FileSystem.from_uri(f"{scheme}://{authority}")
    root = f"{scheme}://{authority}"
    prefix = root[: len(root) - len(base)] if base and root.endswith(base) else root
    return fs, f"{base}/{key}" if key else base, prefix


def source_uri(src: str) -> str:
    """``src`` in one spelling (absolute local path, or scheme://...), to compare sources by."""
    _, path, prefix = _open_source(src)
    return prefix + path.rstrip("/")


def _glob_base(path: str) -> str:
    """The longest leading folder of a glob pattern that holds no wildcard."""
    parts = PurePosixPath(path).parts
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
    return str(PurePosixPath(*parts[:fixed])) if fixed else ""


def list_images(src: str) -> Listing:
    """Every image file under ``src``: a folder (recursive), a single file, or a glob.

    In a glob, ``*`` also matches ``/`` (``photos/*.jpg`` finds nested files
    too). Hidden files and folders (``.DS_Store``, ``._x.jpg`` resource forks,
    ``.ipynb_checkpoints``) and files without an image extension (case
    ignored) are skipped and counted by extension. Paths come back sorted, so
    a listing is the same on every run.
    """
    fs, path, prefix = _open_source(src)
    if isinstance(fs, pafs.LocalFileSystem) and not any(c in path for c in GLOB_CHARS):
        return _list_local(path, src)
    if any(c in path for c in GLOB_CHARS):
        root = _glob_base(path)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        infos = [i for i in infos if fnmatch.fnmatchcase(i.path, path)]
    else:
        root, info = path, fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"image source not found: {src}")
        infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(path, recursive=True))
    listing = Listing(fs, prefix, root=root)
    for info in infos:
        if info.type == pafs.FileType.File:
            _classify(listing, info.path)
    listing.images.sort()
    return listing


def _classify(listing: Listing, path: str) -> None:
    """File ``path`` -> an image candidate, or an ignored entry counted by its kind."""
    rel = PurePosixPath(listing.relative(path))
    ext = rel.suffix.lower()
    if any(part.startswith(".") for part in rel.parts):
        listing.ignored["(hidden)"] += 1
    elif ext in IMAGE_EXTENSIONS:
        listing.images.append(path)
    else:
        listing.ignored[ext or "(none)"] += 1


def _list_local(path: str, src: str) -> Listing:
    """A local folder or file, walked with ``os.scandir``.

    pyarrow's local listing drops dangling symlinks and cannot say that a
    folder was unreadable; here each such entry becomes a failure record.
    """
    listing = Listing(pafs.LocalFileSystem(), "", root=path)
    if os.path.isfile(path):
        listing.root = str(PurePosixPath(path).parent)
        _classify(listing, path)
        return listing
    if not os.path.exists(path):
        raise FileNotFoundError(f"image source not found: {src}")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"image source is neither a folder nor a file: {src}")

    seen: set[str] = set()  # real paths of the folders walked: a symlink back up the tree is not a loop

    def walk(folder: str) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            listing.ignored["(folder seen before, through a symlink)"] += 1
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            listing.failures.append({"path": folder, "reason": f"unreadable folder: {exc.strerror or exc}"})
            return
        for entry in entries:
            try:
                if entry.is_dir():  # follows symlinks, like a file manager; hidden folders' files count as hidden
                    walk(entry.path)
                elif entry.is_file():
                    _classify(listing, entry.path)
                elif entry.is_symlink():
                    listing.failures.append({"path": entry.path, "reason": "dangling symlink: its target "
                                             f"{os.readlink(entry.path)!r} does not exist"})
                else:
                    listing.ignored["(not a regular file)"] += 1
            except OSError as exc:
                listing.failures.append({"path": entry.path, "reason": f"unreadable: {exc.strerror or exc}"})

    walk(path)
    listing.images.sort()
    return listing


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
    fs, fs_path, _ = _open_source(str(path))
    try:
        with fs.open_input_stream(fs_path) as stream:
            data = stream.read()
        return decode_image(data, size, min_side=min_side, max_pixels=max_pixels)
    except BadImage as exc:
        raise UnreadableImage(path, exc.kind, exc) from None
    except OSError as exc:
        raise UnreadableImage(path, "unreadable", exc) from None
