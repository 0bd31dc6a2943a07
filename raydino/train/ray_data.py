"""The pyramid as Ray Data feeds it to training: the columns a run reads, in the same order every time.

Deterministic data order: the split across workers runs with
``preserve_order`` (and no locality hints), so each worker receives the same
rows in the same order every epoch, and the per-epoch shuffle is a local
shuffle seeded by (seed, epoch) (:class:`~raydino.train.trainer.RaySession`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ray.data
import ray.train

from raydino.config import Config
from raydino.pyramids import schema
from raydino.pyramids.batch import columns


def training_dataset(cfg: Config, pyramids_dir: str | Path, rows: int) -> ray.data.Dataset:
    """The generator's columns of the pyramid (string columns cannot become torch batches)."""
    return parquet_dataset(pyramids_dir, columns(cfg.pyramids.sizes), rows, cfg.train.materialize,
                           cfg.train.num_workers)


def parquet_dataset(pyramids_dir: str | Path, names: list[str], rows: int, materialize: bool,
                    num_workers: int, transform: Callable[[dict], dict] | None = None) -> ray.data.Dataset:
    """Some columns of a pyramid as a Ray Data dataset, in file order, streamed unless ``materialize``.

    ``transform``: a ``map_batches`` function applied to every batch first
    (the prior's join of its captions' text embeddings).
    """
    dataset = ray.data.read_parquet(schema.shard_files(pyramids_dir), columns=names)
    dataset.context.execution_options.preserve_order = True  # also for the materialized blocks' order
    if transform is not None:
        dataset = dataset.map_batches(transform, batch_format="numpy")
    if materialize:
        # one equal block per worker: the per-epoch split then never has to cut a block, which takes a
        # remote task (often a fresh worker process) at every epoch start
        dataset = dataset.limit(rows - rows % num_workers).repartition(num_workers).materialize()
    return dataset


def ordered_ingest():
    """Ray Data execution options that make each worker's shard the same on every epoch and every run."""
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options
