"""What the driver checks and reads before a Ray Train run starts, so no mistake reaches a worker.

The pyramid bound to the encoders it was made with, the held-out figures'
inputs (rows and source pixels, read once here), whether ``--out`` already
holds a run, a resumed run's config, and the error naming a pyramid's
damaged shards. The generator's driver (:mod:`raydino.train.trainer`), the
prior's (:mod:`raydino.train.prior_trainer`), the sweep and the CLI use them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from raydino.config import Config, load_config
from raydino.layout import Run
from raydino.pyramids import schema
from raydino.pyramids.batch import columns


def bind_pyramid(cfg: Config, pyramid_dir: str | Path) -> tuple[Config, dict]:
    """``cfg`` bound to the encoders its pyramid was made with, and the pyramid's manifest.

    The encoders come from :func:`~raydino.models.loading.bind_encoders` (a
    copy; ``cfg`` is not changed); that DINOv2 is loaded once on the driver,
    and the manifest must name its weights, levels and token width. The CLI
    calls this before Ray starts, so a mismatch never reaches a worker.
    """
    from raydino.models.loading import bind_encoders, load_dino

    manifest = schema.read_manifest(pyramid_dir)
    cfg = dataclasses.replace(cfg, pyramids=bind_encoders(cfg.pyramids, manifest, str(pyramid_dir)))
    dino = load_dino(cfg.pyramids.dino)
    schema.check_manifest(manifest, levels=cfg.pyramids.sizes, dim=dino.dim, where=str(pyramid_dir))
    schema.check_encoder(manifest, dino.source, dino.hash, str(pyramid_dir), "the training encoder")
    return cfg, manifest


def holdout_payload(cfg: Config, holdout_dir: str | Path | None, dino_hash: str) -> dict | None:
    """The held-out figures' inputs, read once on the driver and shipped to rank 0 with the loop's config.

    The first ``train.val_count`` rows (by id) of the held-out pyramid and
    the pixels of their source images, so workers need no access to the
    image folder; the evaluation encoder is ``eval.fd_encoder`` (the
    training encoder when that is empty, said in the figures' label).
    """
    if holdout_dir is None:
        return None
    from raydino.data.images import read_image
    from raydino.models.loading import require_local

    require_local(cfg.eval.fd_encoder, "eval.fd_encoder")
    manifest = schema.read_manifest(holdout_dir)
    schema.check_manifest(manifest, levels=cfg.pyramids.sizes, where=str(holdout_dir))
    # its codes must be in the training encoder's space
    schema.check_encoder(manifest, cfg.pyramids.dino, dino_hash, str(holdout_dir), "the training pyramid's encoder")
    rows = schema.read_first_rows(holdout_dir, [*columns(cfg.pyramids.sizes), schema.PATH], cfg.train.val_count)
    images = np.stack([read_image(p, max(cfg.pyramids.sizes)) for p in rows.pop(schema.PATH)])
    return {"rows": rows, "images": images, "encoder": cfg.eval.fd_encoder or cfg.pyramids.dino,
            "set": schema.describe_set(manifest) + f"; first {len(images)} by id"}


def corrupt_pyramid(pyramids_dir: str | Path, damaged: dict[str, str], what: str) -> Exception:
    """The error naming each damaged shard of a pyramid and what is wrong with it."""
    from raydino.errors import UserError

    shards = "; ".join(f"{path}: {problem}" for path, problem in damaged.items())
    return UserError(f"--pyramids {pyramids_dir}: {what} ({shards}): recompute the pyramid with "
                     "`raydino pyramids --overwrite`, then train with --overwrite")


def run_exists(run: Run, model: str, resume: bool, flag: str = "--out") -> bool:
    """Whether ``run`` holds Ray Train's record of training ``model``; refuses a mix-up either way.

    The CLI calls this before Ray starts (a :class:`~raydino.errors.UserError`, exit 2).
    """
    from raydino.errors import UserError

    started, experiment = run.started(model), run.experiment(model)
    done = {"generator": run.generator, "prior": run.prior, "student": run.student}[model]
    if (started or done.exists()) and not resume:
        raise UserError(f"{flag} {run.path} already holds a {model} run ({experiment}/): pass --resume to continue "
                        f"it, --overwrite to start it again, or choose another {flag}")
    if resume and not started:
        raise UserError(f"{flag} {run.path}: nothing to resume (no Ray Train record in {experiment}/): leave out "
                        "--resume to start the run")
    return started


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with (``RUN_DIR/config.yaml``), plus ``key=value`` overrides."""
    path = Run(run_dir).config
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume in {run_dir}: no {path.name}")
    return load_config(config_file=str(path), overrides=overrides)
