"""The DINOv2 feature pyramids of an image source, through Ray Data.

The pipeline streams: a listing of paths -> CPU tasks that read and decode
(a bad file becomes a failure record, never an exception) -> an actor pool
that runs :class:`~raydino.pyramids.features.PyramidEncoder` (GPU or CPU, one
code path) -> parquet shards. Ray Data's backpressure bounds what is in
flight, so memory does not grow with the data set.

Ray Data has no streaming split into two outputs, and holding every decoded
image to split them would not be bounded, so the decode tasks write their
failure records beside the shards (``_failures/``, one file per batch, named
by the batch so a retried task overwrites its own) and the driver gathers them
at the end. Everything is written to a temporary folder next to the
destination and renamed into place, so a destination is either absent,
finished, or a failed run's manifest: never half written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydino.config import PyramidConfig
from raydino.data.images import (
    BACKGROUND,
    BadImage,
    Listing,
    Split,
    decode_image,
    list_images,
    relative_path,
    source_uri,
)
from raydino.models.loading import Clip, Dino, load_clip, load_dino
from raydino.progress import CountFile, Tracker, read_done, watch
from raydino.pyramids import schema
from raydino.pyramids.features import PyramidEncoder

log = logging.getLogger(__name__)

FAILURES = "_failures"
PROGRESS = "_progress"
STATS = "ray_data_stats.txt"
SHARD_BYTES = 128 * 2**20
# Float16 tokens are incompressible, and pyarrow's defaults made the writes the
# pipeline's costliest stage (docs/benchmarks.md): dictionary encoding (a
# float16 column's dictionary, at most 65,536 values, never outgrows the limit
# at which pyarrow gives it up), snappy, and min/max statistics of every page.
# Without them one core of an H200's host writes 2.6x as fast; files grow 6%.
PARQUET_WRITE = {"compression": "none", "use_dictionary": False, "write_statistics": [schema.ID]}
# Settings that change what a pyramid holds; the rest (batch size, actors,
# GPUs, failure tolerance) only change how it is computed.
CONTENT_KEYS = ("dino", "clip", "sizes", "thumb_size", "min_side", "max_pixels")


class PyramidError(ValueError):
    """A pyramid that could not be built: no readable image, or too many failures."""


def decode_batch(batch: dict[str, np.ndarray], *, filesystem: pafs.FileSystem, prefix: str, root: str, size: int,
                 min_side: int, max_pixels: int, failures_dir: str) -> dict[str, np.ndarray]:
    """Ray Data decode stage: paths -> ``id``, ``path``, ``image`` of the files that decode.

    The id hashes the path relative to the source's ``root``, so a copy of
    the same folder anywhere (a clone elsewhere, another mount) gets the same
    ids, and with them the same rows in every ordered read. Each file that
    does not decode is written to ``failures_dir`` with its reason instead;
    no file can fail the job.
    """
    ids, paths, images, failures = [], [], [], []
    for shown in batch[schema.PATH]:
        shown = str(shown)
        try:
            with filesystem.open_input_stream(shown[len(prefix):]) as stream:
                data = stream.read()
        except OSError as exc:
            failures.append({"path": shown, "reason": f"unreadable: {exc}"})
            continue
        try:
            images.append(decode_image(data, size, min_side=min_side, max_pixels=max_pixels))
        except BadImage as exc:
            failures.append({"path": shown, "reason": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 - a crafted file can raise anything inside a PIL plugin
            failures.append({"path": shown, "reason": f"corrupt: {type(exc).__name__}: {exc}"})
            continue
        ids.append(schema.stable_id(relative_path(root, shown[len(prefix):])))
        paths.append(shown)
    if failures:
        name = hashlib.sha1("\n".join(map(str, batch[schema.PATH])).encode()).hexdigest()[:16]
        (Path(failures_dir) / f"{name}.json").write_text(json.dumps(failures))
    return {
        schema.ID: np.array(ids, dtype=object),
        schema.PATH: np.array(paths, dtype=object),
        schema.IMAGE: np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
    }


class ArrowPyramidEncoder(PyramidEncoder):
    """:class:`PyramidEncoder` whose batches come out as canonical Arrow tables.

    Numpy batches would become Ray's own tensor extension type, which pyarrow
    alone cannot read; ``fixed_shape_tensor`` columns survive ``write_parquet``
    and read back anywhere. With ``progress_dir``, each actor keeps its count
    of encoded rows there, which the driver's progress line sums.
    """

    def __init__(self, *args, progress_dir: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.counter = CountFile(Path(progress_dir) / f"{uuid.uuid4().hex}.json") if progress_dir else None
        self.done = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        table = schema.make_table(super().__call__(batch))
        if self.counter:
            self.done += table.num_rows
            self.counter.update(self.done)
        return table


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


def _shard_rows(cfg: PyramidConfig, dim: int, patch: int, clip_dim: int) -> int:
    """Rows per parquet shard for about :data:`SHARD_BYTES` of features."""
    tokens = sum((s // patch) ** 2 + 1 for s in cfg.sizes)
    row = tokens * dim * 2 + cfg.thumb_size**2 * 3 + clip_dim * 4
    return max(cfg.batch_size, SHARD_BYTES // row)


def _run(cfg: PyramidConfig, listing: Listing, tmp: Path, shard_rows: int) -> float:
    """Run the Ray Data pipeline into ``tmp``; return its wall time in seconds.

    With GPU actors the decode tasks run on the CPUs beside them. Without
    GPUs both stages ask for the same resources and Ray Data fuses decoding
    into the encoder actors: on a CPU-only machine, ``actors`` sets how many
    cores work (one per actor), and the writes ask for no CPU, or they would
    wait for the actors to exit while every encoded block piled up in the
    object store. Ray Data's per-operator stats go to :data:`STATS`.
    """
    import ray

    failures_dir, progress_dir = tmp / FAILURES, tmp / PROGRESS
    failures_dir.mkdir(parents=True)
    paths = [{schema.PATH: listing.display(p)} for p in listing.images]
    ds = ray.data.from_items(paths, override_num_blocks=max(1, math.ceil(len(paths) / cfg.batch_size)))
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs=dict(filesystem=listing.filesystem, prefix=listing.prefix, root=listing.root, size=max(cfg.sizes),
                       min_side=cfg.min_side, max_pixels=cfg.max_pixels, failures_dir=str(failures_dir)),
        batch_size=cfg.batch_size,
        compute=ray.data.TaskPoolStrategy(size=cfg.decode_concurrency or None),
    )
    ds = ds.map_batches(
        ArrowPyramidEncoder,
        fn_constructor_kwargs=dict(dino=cfg.dino, sizes=cfg.sizes, thumb_size=cfg.thumb_size, clip=cfg.clip,
                                   device="cuda" if cfg.num_gpus > 0 else "cpu", progress_dir=str(progress_dir)),
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_gpus=cfg.num_gpus or None,
    )
    start = time.perf_counter()
    finished: list[int] = []  # once written, every path is a row or a failure (the actors' last counts may lag)
    tracker = Tracker("extraction", len(paths), "images", lambda: finished[0] if finished else
                      read_done(progress_dir, "*.json") + _count_failures(failures_dir))
    with watch(tracker):
        ds.write_parquet(str(tmp), min_rows_per_file=shard_rows,
                         ray_remote_args={"num_cpus": 1 if cfg.num_gpus else 0}, **PARQUET_WRITE)
        finished.append(len(paths))
    seconds = time.perf_counter() - start
    shutil.rmtree(progress_dir, ignore_errors=True)
    (tmp / STATS).write_text(ds.stats())
    return seconds


def _count_failures(failures_dir: Path) -> int:
    """How many files the decode tasks have failed so far (their records, read while they write more)."""
    count = 0
    for f in failures_dir.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            count += len(json.loads(f.read_text()))
    return count


def _gather_failures(tmp: Path) -> list[dict[str, str]]:
    """The decode tasks' failure records, one per path (a retried batch wrote the same file)."""
    records = {}
    for f in sorted((tmp / FAILURES).glob("*.json")):
        for rec in json.loads(f.read_text()):
            records[rec["path"]] = rec
    shutil.rmtree(tmp / FAILURES, ignore_errors=True)
    return [records[p] for p in sorted(records)]


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


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing what was there."""
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _summary(manifest: dict, out: Path) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(manifest["failure_counts"].items()))
    ignored = sum(manifest["ignored"].values())
    return (f"{manifest['rows']} rows, {len(manifest['failures'])} failures" + (f" ({counts})" if counts else "")
            + f", {ignored} ignored, {manifest['images_per_s']:.1f} images/s ({manifest['seconds']:.1f}s) -> {out}")


def _manifest(cfg: PyramidConfig, images: str, listing: Listing, dino: Dino, clip: Clip | None,
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


def _verdict(manifest: dict, cfg: PyramidConfig, images: str) -> str:
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


def build_pyramids(cfg: PyramidConfig, images: str, out: str | Path, overwrite: bool = False,
                   split: Split | None = None) -> dict:
    """Compute the pyramids of every image under ``images`` (or of one ``split`` side of them) into ``out``.

    Returns the manifest. Entries that could not be listed (dangling
    symlinks, unreadable folders) and ignored files are recorded in the
    training side's manifest, or in the only one when there is no split. A finished ``out`` made from the same source and
    settings is left alone (``overwrite`` recomputes it). Raises
    :class:`PyramidError` after writing a failed run's manifest to ``out``
    when no image is readable or the failure fraction exceeds
    ``cfg.max_failure_fraction``. Uses the Ray instance the caller started,
    or a local one.
    """
    out = Path(out).expanduser().absolute()
    listing = list_images(images)
    split_info = split.apply(listing) if split else None
    if split and split.part == "holdout":  # the training side's manifest accounts for these
        listing.failures, listing.ignored = [], type(listing.ignored)()
    done = finished_output(cfg, out, images, overwrite, split_info)
    if done:
        print(f"pyramids: {out} is finished already ({done['rows']} rows); nothing to do (--overwrite recomputes)")
        return done

    dino = load_dino(cfg.dino)  # fail before any Ray work on a model that is not there
    clip = load_clip(cfg.clip) if cfg.clip else None
    bad = [s for s in cfg.sizes if s % dino.patch_size]
    if bad:
        raise ValueError(f"pyramid sizes {bad} are not multiples of the patch size {dino.patch_size}")

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        shard_rows = _shard_rows(cfg, dino.dim, dino.patch_size, clip.dim if clip else 0)
        seconds = _run(cfg, listing, tmp, shard_rows) if listing.images else 0.0
        failures = sorted(listing.failures + _gather_failures(tmp), key=lambda f: f["path"])
        shards = sorted(tmp.glob("*.parquet"))
        manifest = _manifest(cfg, images, listing, dino, clip, shards, failures, seconds, split_info)
        error = _verdict(manifest, cfg, images)
        if error:  # keep only the manifest: a failed pyramid must not look usable
            for f in shards:
                f.unlink()
            manifest.update(status="failed", error=error, rows=0, shards=[])
        schema.write_manifest(tmp, manifest)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = _summary(manifest, out)
    if manifest["status"] != "ok":
        raise PyramidError(f"{error}; {summary}; failures are listed in {out / schema.MANIFEST}")
    print(f"pyramids: {summary}", flush=True)
    return schema.read_manifest(out)
