"""The on-disk pyramid format: column names, Arrow types and the manifest.

Shards are plain parquet with Arrow's canonical ``fixed_shape_tensor``
extension type, so pyarrow alone reads them (no Ray needed) and Ray Data reads
them as tensor columns. See ``docs/01-feature-pyramid.md``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raydino import __version__

MANIFEST = "manifest.json"
ID, PATH = "id", "path"  # a row's stable id (hash of its relative path) and its source image
IMAGE = "image"  # the decoded crop, between decoding and encoding only (never stored)
THUMB = "thumb"
CLIP = "clip"


def tokens_col(size: int) -> str:
    return f"tokens_{size}"


def cls_col(size: int) -> str:
    return f"cls_{size}"


def stable_id(path: str) -> str:
    """Same source path, same id, on every machine and every rerun."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:16]


def tensor_array(values: np.ndarray) -> pa.Array:
    """``[rows, *shape]`` numpy -> Arrow fixed-shape tensor array, without copying.

    ``FixedShapeTensorArray.from_numpy_ndarray`` copied float16 through a slow
    path (0.2-0.5 s per 25 MB on the 2-core development machine), inside the
    encoder actor, between two GPU batches. Wrapping the buffer is free.
    """
    values = np.ascontiguousarray(values)
    flat = pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), values.size, [None, pa.py_buffer(values)])
    storage = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(storage.type.value_type, values.shape[1:]), storage)


def to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow fixed-shape tensor column (or Ray's tensor column) -> ``[rows, *shape]``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if hasattr(column, "to_numpy_ndarray"):
        return column.to_numpy_ndarray()
    return np.asarray(column.to_numpy(zero_copy_only=False))


def make_table(batch: dict[str, Any]) -> pa.Table:
    """A pyramid shard from a batch dict of numpy arrays (ids and paths as lists)."""
    cols = {}
    for name, value in batch.items():
        if isinstance(value, np.ndarray) and value.ndim > 1:
            cols[name] = tensor_array(value)
        else:
            cols[name] = pa.array(list(value), type=pa.string())
    return pa.table(cols)


def new_manifest(*, source: str, rows: int, levels: list[int], dim: int, dino: dict, clip: dict | None = None,
                 **fields: Any) -> dict:
    """A finished pyramid's manifest: what every reader checks, then ``fields`` (the extraction's record).

    ``dino``/``clip``: each encoder's ``describe()`` (``source``, ``hash``,
    and ``dim`` for CLIP). The one place a manifest is put together, for
    extraction and for the pyramids tests and benchmarks write by hand.
    """
    return {"status": "ok", "source": source, "rows": rows, "failures": [], "levels": list(levels), "dim": dim,
            "dtype": "float16", "dino": dino, "clip": clip, **fields}


def write_manifest(out: str | Path, manifest: dict) -> Path:
    path = manifest_path(out)
    path.write_text(json.dumps({**manifest, "raydino_version": __version__}, indent=2))
    return path


def read_manifest(pyramid_dir: str | Path) -> dict:
    path = manifest_path(pyramid_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no pyramid at {pyramid_dir}: {MANIFEST} is missing (run `raydino pyramids` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def manifest_path(pyramid_dir: str | Path) -> Path:
    return Path(pyramid_dir) / MANIFEST


def finished_manifest(pyramid_dir: str | Path) -> dict | None:
    """The manifest of a finished pyramid, or None: absent, unreadable, or a failed extraction's.

    A failed extraction keeps its manifest, with ``status: failed`` and the
    failures, so that a rerun tries again; a manifest without a status
    (written before extraction recorded one) is a finished pyramid.
    """
    try:
        manifest = read_manifest(pyramid_dir)
    except (FileNotFoundError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("status", "ok") == "ok" else None


def describe_set(manifest: dict) -> str:
    """Which images a pyramid holds, in words: every figure computed on it carries this label."""
    split = manifest.get("split")
    source = manifest.get("source", "?")
    if not split:
        return f"all {manifest.get('rows')} images of {source}"
    side = "held-out" if split["part"] == "holdout" else "training"
    return (f"{side} split of {source}: {manifest.get('rows')} images "
            f"({split['files_held_out']} of {split['files_total']} files held out)")


class ManifestMismatch(ValueError):
    """A pyramid that was made with other settings than the run expects."""


def check_manifest(manifest: dict, *, levels: list[int], dim: int | None = None, need_clip: bool = False,
                   where: str = "") -> None:
    """Refuse a pyramid that does not match the config, naming the field."""
    where = f"{where}: " if where else ""
    if list(manifest.get("levels", [])) != list(levels):
        raise ManifestMismatch(f"{where}pyramid field 'levels' is {manifest.get('levels')}, config expects {levels}")
    if dim is not None and manifest.get("dim") != dim:
        raise ManifestMismatch(f"{where}pyramid field 'dim' is {manifest.get('dim')}, the DINOv2 model has {dim}")
    if need_clip and not manifest.get("clip"):
        raise ManifestMismatch(f"{where}pyramid field 'clip' is empty: recompute the pyramid with a CLIP model")
    if not manifest.get("rows"):
        raise ManifestMismatch(f"{where}pyramid field 'rows' is 0: the pyramid holds no images")


def check_encoder(manifest: dict, source: str, weights_hash: str, where: str, whose: str) -> None:
    """Refuse a pyramid made with other DINOv2 weights than ``whose`` (``source``, ``weights_hash``).

    The weights hash is the encoder's identity: the same weights under
    another path are the same encoder; the one check every reader of a
    pyramid (training, held-out figures, evaluation) makes.
    """
    made = manifest.get("dino") or {}
    if made.get("hash") != weights_hash:
        raise ManifestMismatch(f"{where}: made with DINOv2 {made.get('source')} (hash {made.get('hash')}), but "
                               f"{whose} is {source} (hash {weights_hash}): use pyramids of one encoder")


def shard_files(pyramid_dir: str | Path) -> list[str]:
    return sorted(str(p) for p in Path(pyramid_dir).glob("*.parquet"))


def damaged_shards(pyramid_dir: str | Path, columns: list[str]) -> dict[str, str]:
    """What is wrong with each shard whose ``columns`` cannot be read or hold NaN/inf: a full read.

    Called only after a run failed or met non-finite rows, to name the files.
    """
    found = {}
    for f in shard_files(pyramid_dir):
        try:
            table = pq.read_table(f, columns=columns)
        except (OSError, ValueError) as exc:
            found[f] = f"cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            continue
        bad = sum(int((~np.isfinite(to_numpy(table[c]).astype(np.float32))).sum()) for c in columns)
        if bad:
            found[f] = f"{bad} non-finite values"
    return found


def read_first_rows(pyramid_dir: str | Path, columns: list[str], count: int) -> dict[str, np.ndarray]:
    """The ``count`` rows with the smallest ids: a fixed validation set, read without loading the whole pyramid."""
    files = shard_files(pyramid_dir)
    if not files:
        raise FileNotFoundError(f"no parquet shards in {pyramid_dir}")
    ids = pa.concat_arrays([pq.read_table(f, columns=[ID])[ID].combine_chunks() for f in files])
    chosen = pc.take(ids, pc.sort_indices(ids)[:count])
    table = pa.concat_tables([pq.read_table(f, columns=[ID, *columns], filters=pc.field(ID).isin(chosen))
                              for f in files]).sort_by(ID)
    return {c: to_numpy(table[c]).copy() for c in columns}  # writable: torch warns on read-only arrays


def read_sample(pyramid_dir: str | Path, columns: list[str], count: int) -> dict[str, np.ndarray]:
    """The first ``count`` rows in file order, read batch by batch: a bounded sample of a pyramid of any size."""
    files = shard_files(pyramid_dir)
    if not files:
        raise FileNotFoundError(f"no parquet shards in {pyramid_dir}")
    batches, rows = [], 0
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=min(count, 1024), columns=columns):
            batches.append(batch.slice(0, count - rows))
            rows += len(batches[-1])
            if rows == count:
                break
        if rows == count:
            break
    table = pa.Table.from_batches(batches)
    return {c: to_numpy(table[c]).copy() for c in columns}


def load_arrays(pyramid_dir: str | Path, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read a whole (small) pyramid with pyarrow alone, rows sorted by id."""
    files = shard_files(pyramid_dir)
    if not files:
        raise FileNotFoundError(f"no parquet shards in {pyramid_dir}")
    table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
    if ID in table.column_names:
        table = table.sort_by(ID)
    return {
        name: (to_numpy(table[name]) if isinstance(table[name].type, pa.BaseExtensionType)
               else np.asarray(table[name].to_pylist()))
        for name in table.column_names
    }
