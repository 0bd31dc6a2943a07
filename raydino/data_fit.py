"""Sizes that depend on the data, fitted to a pyramid's rows before the step that needs them runs.

A preset is written for a data set of a certain size: a batch of 16 faces
per stage, 64 codes per prior step, 512 held-out faces for the figures. A
user's folder of two dozen photos cannot fill those, and finding out at the
flow-prior step throws away the minutes before it. So every size a step
takes from the rows is lowered here to what the rows allow, with one log
line each, and what cannot be lowered far enough (fewer rows than workers)
is refused in one sentence before Ray starts. ``raydino run`` records the
changes in ``OUT/fitted.json`` and the report shows them.
"""

from __future__ import annotations

import logging
import math

from raydino.config import Config, override
from raydino.errors import UserError

log = logging.getLogger(__name__)

MIN_EVAL_ROWS = 4  # FD with its floor compares two halves of at least two images each


def fit_to_rows(cfg: Config, rows: int, held_out: int | None = None, where: str = "the training pyramid",
                quiet: bool = False) -> tuple[Config, list[str]]:
    """``cfg`` with each batch no larger than ``rows`` allow, and ``eval.n`` no larger than ``held_out``.

    Returns the fitted config and one sentence per change. A generator
    stage's batch splits across ``train.num_workers`` (and, when the sweep
    runs, ``tune.workers_per_trial``), the prior's across
    ``prior.num_workers``; each is lowered to the largest multiple of its
    workers that the rows fill. A stage keeps its number of steps (what its
    schedule, checkpoints and time are counted in) and so sees fewer images.
    """
    values, notes = {}, []
    workers = math.lcm(cfg.train.num_workers, cfg.tune.workers_per_trial if cfg.tune.trials else 1)
    batches = [*((f"train.stages.{i}", s.batch_size, workers, s) for i, s in enumerate(cfg.train.stages)),
               ("prior", cfg.prior.batch_size, cfg.prior.num_workers, None)]
    for section, batch, split, stage in batches:
        key = f"{section}.batch_size"
        if rows < split:
            raise UserError(f"{where} has {rows} rows, fewer than the {split} workers {key} is split across: add "
                            "images, or lower train.num_workers / prior.num_workers / tune.workers_per_trial")
        most = rows // split * split
        if batch > most:
            values[key] = most
            notes.append(f"{key} {batch} -> {most}: {where} has {rows} rows")
            if stage is not None:  # a stage keeps its steps (its schedule and time), so it sees fewer images
                values[f"{section}.images"] = stage.steps * most
                values[f"{section}.fade_images"] = stage.fade_images * most // batch
                notes[-1] += f" (the same {stage.steps} steps: {section}.images -> {stage.steps * most})"
    if held_out is not None and held_out < 1:
        raise UserError(f"{where} leaves no row for the held-out side (it takes at most a third of the images): "
                        "give at least 3 images")
    if held_out is not None and cfg.eval.n > held_out:
        values["eval.n"] = held_out
        notes.append(f"eval.n {cfg.eval.n} -> {held_out}: the held-out pyramid has {held_out} rows"
                     + ("" if held_out >= MIN_EVAL_ROWS else
                        f", fewer than the {MIN_EVAL_ROWS} the figures need: the run has no evaluation"))
    if not quiet:
        for note in notes:
            log.info("fitted to the data: %s", note)
    return (override(cfg, values=values) if values else cfg), notes
