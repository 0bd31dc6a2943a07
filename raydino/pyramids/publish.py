"""What a pyramid's extraction writes around its shards: the manifest, the verdict, the atomic publish.

Whether ``out`` already holds a finished pyramid of the same request (or
something that is not a pyramid), the manifest of a finished run with its
preprocessing recipe, whether it may be used, and the rename of the
temporary folder into place, so a destination is either absent, finished,
or a failed run's manifest. :mod:`raydino.pyramids.extract` runs the Ray
Data graph between them.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from raydino.config import PyramidConfig
from raydino.data.images import BACKGROUND
from raydino.data.sources import Listing, source_uri
from raydino.models.loading import Clip, Dino
from raydino.pyramids import schema

log = logging.getLogger(__name__)

# Settings that change what a pyramid holds; the rest (batch size, actors,
# GPUs, failure tolerance) only change how it is computed.
CONTENT_KEYS = ("dino", "clip", "sizes", "thumb_size", "min_side", "max_pixels")


class PyramidError(ValueError):
    """A pyramid that could not be built: no readable image, or too many failures."""


def preprocessing(cfg: PyramidConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """The exact recipe from file to encoder input, as written to the manifest."""
    size = max(cfg.sizes)
    return {
        "decode": "PIL; JPEGs decoded at the largest DCT reduction (draft: 1/2, 1/4 or 1/8) whose result still "
                  f"covers {size} px; EXIF orientation applied; first frame of animations",
        "to_rgb": f"16-bit grayscale scaled by 1/257; transparency composited on RGB {list(BACKGROUND)}; "
                  "other modes (L, CMYK, P, ...) through PIL convert('RGB'), no ICC colour management",
        "crop": f"resize shortest side to {size} with PIL Lanczos (reducing_gap=3.0), centre crop {size}x{size}",
        "levels": "uint8 -> float [0, 1], then torch bilinear antialiased resize (align_corners=False) per level",
        "normalise": {"mean": list(mean), "std": list(std)},
        "thumb": f"same resize to {cfg.thumb_size}x{cfg.thumb_size}, rounded to uint8",
        "encoder": "bf16 autocast on CUDA, float32 on CPU; stored as float16",
        "min_side": cfg.min_side,
        "max_pixels": cfg.max_pixels,
    }


def _check_same_request(manifest: dict, cfg: PyramidConfig, images: str, out: Path, split: dict | None) -> None:
    made = manifest.get("config", {})
    wanted = dataclasses.asdict(cfg)
    for key in CONTENT_KEYS:
        if made.get(key) != wanted[key]:
            raise schema.ManifestMismatch(
                f"{out} holds a finished pyramid made with {key}={made.get(key)!r}, not {wanted[key]!r}: "
                "pass --overwrite to recompute it"
            )
    if manifest.get("source") != source_uri(images):
        raise schema.ManifestMismatch(
            f"{out} holds a finished pyramid of {manifest.get('source')!r}, not {images!r}: pass --overwrite to recompute it"
        )
    keys = ("part", "holdout_fraction", "holdout_min")
    made_split, wanted_split = manifest.get("split") or {}, split or {}
    if [made_split.get(k) for k in keys] != [wanted_split.get(k) for k in keys]:
        raise schema.ManifestMismatch(f"{out} holds a finished pyramid of another split ({made_split or 'none'}): "
                                      "pass --overwrite to recompute it")


def remove_leftovers(out: Path) -> None:
    """Remove the temporary folders a killed extraction into ``out`` left behind.

    The caller holds ``out``'s lock (:mod:`raydino.lock`), so no live
    extraction is writing into them.
    """
    for leftover in sorted([*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]):
        log.warning("removing %s, left by an extraction into %s that did not finish", leftover, out)
        shutil.rmtree(leftover, ignore_errors=True)


def publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing what was there."""
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def summary_line(manifest: dict, out: Path) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(manifest["failure_counts"].items()))
    ignored = sum(manifest["ignored"].values())
    return (f"{manifest['rows']} rows, {len(manifest['failures'])} failures" + (f" ({counts})" if counts else "")
            + f", {ignored} ignored, {manifest['images_per_s']:.1f} images/s ({manifest['seconds']:.1f}s) -> {out}")


def make_manifest(cfg: PyramidConfig, images: str, listing: Listing, dino: Dino, clip: Clip | None,
              shards: list[Path], failures: list[dict[str, str]], seconds: float, split: dict | None) -> dict[str, Any]:
    rows = sum(pq.read_metadata(f).num_rows for f in shards)
    if rows + len(failures) != len(listing.images) + len(listing.failures):
        log.warning("%d rows + %d failures != %d images listed", rows, len(failures), len(listing.images))
    return schema.new_manifest(
        source=source_uri(images), rows=rows, levels=cfg.sizes, dim=dino.dim, dino=dino.describe(),
        clip=clip.describe() if clip else None,
        split=split,
        images_listed=len(listing.images),
        listing_failures=len(listing.failures),  # entries that could not be listed as files (dangling symlinks)
        failures=failures,
        failure_counts=dict(Counter(f["reason"].split(":", 1)[0] for f in failures)),
        ignored=dict(listing.ignored),
        grids=[s // dino.patch_size for s in cfg.sizes],
        thumb_size=cfg.thumb_size,
        preprocessing=preprocessing(cfg, dino.mean, dino.std),
        config=dataclasses.asdict(cfg),
        shards=[f.name for f in shards],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(seconds, 3),
        images_per_s=round(rows / seconds, 2) if seconds else 0.0,
    )


def verdict(manifest: dict, cfg: PyramidConfig, images: str) -> str:
    """Why this pyramid must not be used, or an empty string."""
    listed = manifest["images_listed"] + manifest["listing_failures"]
    failed = len(manifest["failures"])
    if manifest["rows"] == 0:
        return f"no readable image in {images} ({listed} image files, {failed} failures)"
    if failed > cfg.max_failure_fraction * listed:
        return f"{failed} of {listed} images failed, more than max_failure_fraction={cfg.max_failure_fraction}"
    return ""


def finished_output(cfg: PyramidConfig, out: Path, images: str, overwrite: bool, split: dict | None) -> dict | None:
    """The manifest of a finished ``out`` made from the same request (nothing to do), else None.

    A finished pyramid of another source or split, or a folder that is not a
    pyramid, is refused unless ``overwrite``; the CLI asks this before Ray starts.
    """
    if overwrite:
        return None
    done = schema.finished_manifest(out)
    if done:
        _check_same_request(done, cfg, images, out, split)
        return done
    if out.exists() and not (out / schema.MANIFEST).exists() and (out.is_file() or any(out.iterdir())):
        raise PyramidError(f"{out} exists and is not a pyramid: choose another --out, or pass --overwrite to replace it")
    return None
