"""Training checkpoints and the finished models, on disk, without Ray.

The generator and the prior checkpoint the same way. A checkpoint directory
holds everything needed to continue bit for bit:

- ``model.safetensors`` and ``ema.safetensors``: weights (safetensors: no
  pickle, and the header carries what the model is built from);
- ``optimizer.pt``: the optimizer state, read back with ``weights_only=True``;
- ``state.json``: stage, step, data position, skipped-step counters, baselines;
- ``rng_rank<r>.pt``: each worker's noise/shift generator (every rank writes its own);
- ``config.yaml``: the resolved config.

The file names are :class:`raydino.layout.Checkpoint`'s. A file that cannot
be read is a :class:`~raydino.models.saved.CheckpointError` naming it; the caller
falls back to an older checkpoint when there is one. The finished models
are the EMA weights exported into the run folder (:class:`raydino.layout.Run`),
which :mod:`raydino.layout` loads back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from raydino.config import Config, load_config, save_config
from raydino.layout import CONFIG, Checkpoint, Run
from raydino.models.generator import ProgressiveGenerator
from raydino.models.loading import save_weights
from raydino.models.saved import CheckpointError, header, load_weights, read_file

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training is: enough to resume with the same next batch."""

    stage: int = 0          # index into train.stages; == len(stages) when finished
    step: int = 0           # global steps taken, skipped ones included
    stage_step: int = 0
    epoch: int = 0          # data epoch (each stage starts a new one)
    epoch_batch: int = 0    # batches of this epoch already consumed
    images_seen: int = 0
    bad_steps: int = 0      # skipped (non-finite) steps in total
    bad_in_row: int = 0
    baselines: dict[str, float] = field(default_factory=dict)
    heldout: dict[str, float] = field(default_factory=dict)  # held-out figures at the last stage end (or step 0)

    def advance(self, images: int, ok: bool) -> None:
        """Count one step (a skipped one too: its batch was consumed)."""
        self.step, self.stage_step, self.epoch_batch = self.step + 1, self.stage_step + 1, self.epoch_batch + 1
        self.images_seen += images
        self.bad_steps += not ok
        self.bad_in_row = 0 if ok else self.bad_in_row + 1

    def next_stage(self) -> None:
        """Move to the next stage; its batch size differs, so it starts a new data epoch."""
        self.stage, self.stage_step = self.stage + 1, 0
        self.epoch, self.epoch_batch = self.epoch + 1, 0


def generator_metadata(model: ProgressiveGenerator) -> dict[str, str]:
    return {"code_tokens_dim": str(model.code_tokens_dim), "grid": str(model.grid)}


def save(directory: str | Path, *, rank: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
         progress: Progress, rng: torch.Generator, cfg: Config, metadata: dict[str, str]) -> None:
    """Write this rank's part of a checkpoint: rank 0 everything shared, every rank its RNG.

    ``metadata`` goes into both weight files' headers: what the model is rebuilt from.
    """
    d = Path(directory)
    if rank == 0:
        save_weights(model.state_dict(), d / Checkpoint.MODEL, metadata)
        save_weights(ema.state_dict(), d / Checkpoint.EMA, metadata)
        torch.save(opt.state_dict(), d / Checkpoint.OPTIMIZER)
        (d / Checkpoint.STATE).write_text(json.dumps(asdict(progress), indent=1))
        save_config(cfg, d / CONFIG)
    torch.save({"noise": rng.get_state()}, d / Checkpoint.rng(rank))


def load(directory: str | Path, *, rank: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
         rng: torch.Generator) -> Progress:
    """Restore a checkpoint in place; raises :class:`CheckpointError` naming the first bad file."""
    d = Path(directory)
    progress = read_file(d / Checkpoint.STATE, lambda p: Progress(**json.loads(p.read_text())))
    load_weights(d / Checkpoint.MODEL, model)
    load_weights(d / Checkpoint.EMA, ema)
    opt_state = read_file(d / Checkpoint.OPTIMIZER, lambda p: torch.load(p, weights_only=True))
    if (d / Checkpoint.rng(rank)).is_file():
        rng.set_state(read_file(d / Checkpoint.rng(rank), lambda p: torch.load(p, weights_only=True))["noise"])
    else:  # resumed on more workers than wrote the checkpoint
        log.warning("%s has no RNG state for rank %d: new noise stream, the run is no longer bitwise reproducible",
                    d, rank)
    try:
        opt.load_state_dict(opt_state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint file {d / Checkpoint.OPTIMIZER} does not fit this optimizer ({exc})") from exc
    return progress


def restore_latest(directories: Iterable[Path], **kwargs) -> Progress | None:
    """Load the newest readable checkpoint of ``directories`` (newest first).

    A bad checkpoint is logged with the file at fault and the next older one
    is tried; if none is readable, the first error is raised.
    """
    errors: list[CheckpointError] = []
    for d in directories:
        try:
            progress = load(d, **kwargs)
        except CheckpointError as exc:
            log.error("%s; trying the previous checkpoint", exc)
            errors.append(exc)
            continue
        if errors:
            log.warning("resumed from %s after %d unreadable newer checkpoint(s)", d, len(errors))
        return progress
    if errors:
        raise CheckpointError(f"{errors[0]}; no earlier readable checkpoint to fall back to")
    return None


def export_ema(checkpoint_dir: str | Path, dest: str | Path) -> Path:
    """Copy a checkpoint's EMA weights, header included, to ``dest``: the finished model."""
    src = Path(checkpoint_dir) / Checkpoint.EMA
    save_weights(read_file(src, lambda p: load_file(str(p))), dest, read_file(src, header))
    return Path(dest)


def export_generator(checkpoint_dir: str | Path, run_dir: str | Path) -> Path:
    """Copy a checkpoint's EMA weights and config into ``run_dir`` as the finished generator."""
    src, run_dir = Path(checkpoint_dir), Path(run_dir)
    export_ema(src, Run(run_dir).generator)
    save_config(load_config(config_file=str(src / CONFIG)), run_dir / CONFIG)
    return Run(run_dir).generator
