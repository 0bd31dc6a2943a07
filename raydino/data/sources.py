"""Where the images of a source are: listing a folder, glob or URI through pyarrow filesystems, and the held-out split.

Listing never decodes a pixel; what it cannot use it counts by reason
(``Listing.ignored``) or records as a failure, so a messy folder is described
before any work starts. Pure (no Ray): ``pyramids/extract.py`` and the
checks of ``--images`` call it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
GLOB_CHARS = "*?["


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


def open_source(src: str) -> tuple[pafs.FileSystem, str, str]:
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
    _, path, prefix = open_source(src)
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
    fs, path, prefix = open_source(src)
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
