"""What the training loop needs from its surroundings, and a Ray-free implementation.

The loop (``loop.py``) talks to a :class:`Session`: its rank, its device, its
shard of the pyramid per epoch, where checkpoints are, how to report. Ray
Train provides one (``trainer.RaySession``); :class:`LocalSession` runs the
same loop in one process from parquet read with pyarrow, for tests and the
benchmark's in-device baseline.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from raydino.layout import Checkpoint
from raydino.pyramids import schema


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def batches(self, epoch: int, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        """This worker's batches of one epoch, in an order that depends only on (seed, epoch)."""

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move to the device and wrap for data parallelism."""

    def checkpoint_dirs(self) -> Iterator[Path]:
        """Local directories of the checkpoints to resume from, newest first (none on a fresh run)."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        """Publish metrics with a checkpoint (each rank's part of it); a barrier across workers."""

    def wait_for_checkpoints(self) -> None:
        """Return once every reported checkpoint is committed (resumable)."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order seed of one epoch: a function of (seed, epoch) only, so a resumed run sees the same order."""
    return seed * 1_000_003 + epoch


class LocalSession:
    """One process, no Ray: the whole (small) pyramid in memory, this rank's rows per epoch.

    ``source``: a pyramid folder, or columns already in memory (the
    student's teacher pairs), of which ``columns`` are kept.
    """

    def __init__(self, source: str | Path | dict[str, np.ndarray], columns: list[str], *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 checkpoints: str | Path | None = None):
        self.rank, self.world_size, self.device, self.seed = rank, world_size, torch.device(device), seed
        arrays = ({k: source[k] for k in columns} if isinstance(source, dict) else
                  schema.load_arrays(source, columns))
        n = len(next(iter(arrays.values()))) // world_size * world_size  # equal shards, like Ray's split
        self.rows = {k: torch.from_numpy(v[rank:n:world_size].copy()) for k, v in arrays.items()}
        self.checkpoint_root = Path(checkpoints or tempfile.mkdtemp(prefix="raydino-ckpt-"))
        self.reports: list[dict[str, float]] = []

    def batches(self, epoch: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        n = len(next(iter(self.rows.values())))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))
        for i in range(0, n - batch_size + 1, batch_size):
            yield {k: v[order[i : i + batch_size]] for k, v in self.rows.items()}

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def checkpoint_dirs(self) -> Iterator[Path]:
        yield from sorted(self.checkpoint_root.glob("step_*"), reverse=True)

    def wait_for_checkpoints(self) -> None:
        """Reports are committed as they are written."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        self.reports.append(dict(metrics))
        shutil.copytree(checkpoint_dir, self.checkpoint_root / Checkpoint.folder(metrics["step"]), dirs_exist_ok=True)
