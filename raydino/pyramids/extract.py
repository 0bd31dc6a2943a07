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
import hashlib
import json
import logging
import math
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from raydino.config import PyramidConfig
from raydino.data.images import BadImage, decode_image
from raydino.data.sources import Listing, Split, list_images, relative_path
from raydino.models.loading import load_clip, load_dino
from raydino.progress import CountFile, Tracker, read_done, watch
from raydino.pyramids import schema
from raydino.pyramids.features import PyramidEncoder
from raydino.pyramids.publish import (
    PyramidError,
    finished_output,
    make_manifest,
    publish,
    remove_leftovers,
    summary_line,
    verdict,
)

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
    # rows in listing order whichever block finishes first: training reads a pyramid in file order
    ds.context.execution_options.preserve_order = True
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
        manifest = make_manifest(cfg, images, listing, dino, clip, shards, failures, seconds, split_info)
        error = verdict(manifest, cfg, images)
        if error:  # keep only the manifest: a failed pyramid must not look usable
            for f in shards:
                f.unlink()
            manifest.update(status="failed", error=error, rows=0, shards=[])
        schema.write_manifest(tmp, manifest)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summary_line(manifest, out)
    if manifest["status"] != "ok":
        raise PyramidError(f"{error}; {summary}; failures are listed in {out / schema.MANIFEST}")
    print(f"pyramids: {summary}", flush=True)
    return schema.read_manifest(out)
