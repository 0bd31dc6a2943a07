"""``raydino train-prior``: the driver side of the prior's training, and its PCA baseline.

The driver reads a bounded sample of the pyramid (``prior.fit_rows`` rows,
in file order): the per-channel code statistics the prior standardises
with, and the PCA Gaussian baseline, both fitted on it. Everything else is
the generator's Ray Train wiring: the coarse level and the CLIP column go to
the workers through Ray Data, the workers run ``prior_loop.fit_prior`` under DDP
with checkpoints, failure retries and resume, and the EMA weights land in
``RUN_DIR/prior.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from raydino.config import Config, from_dict, to_dict
from raydino.data_fit import fit_to_rows
from raydino.layout import Run
from raydino.models.flow_prior import FlowPrior
from raydino.models.loading import bind_encoders
from raydino.models.pca_prior import PCAGaussianPrior
from raydino.pyramids import schema
from raydino.train import checkpoint
from raydino.train.conditions import add_text_column, condition_stats, resolved, text_table
from raydino.train.preflight import run_exists
from raydino.train.prior_loop import prior_columns
from raydino.train.ray_data import parquet_dataset
from raydino.train.trainer import (
    RaySession,
    fail_at_step,
    fit,
    torch_trainer,
    worker_setup,
)

log = logging.getLogger(__name__)


def _prior_fn(loop_config: dict) -> dict:
    """Runs on every Ray Train worker."""
    from raydino.train import prior_loop

    cfg = from_dict(loop_config["cfg"])
    worker_setup(cfg.prior)
    session = RaySession(cfg.prior.seed, cfg.prior.shuffle_buffer)
    return prior_loop.fit_prior(cfg, loop_config["run_dir"], session, loop_config["shape"],
                          fail_at_step=loop_config["fail_at_step"])


def code_shape(cfg: Config, pyramids_dir: str | Path, manifest: dict) -> tuple[dict, torch.Tensor]:
    """The prior's ``shape`` (tokens, dim, CLIP width, code statistics, and the image embeddings' statistics when
    the pyramid has them) and the bounded sample of codes it came from."""
    col = schema.tokens_col(cfg.pyramids.sizes[0])
    codes = torch.from_numpy(schema.read_sample(pyramids_dir, [col], cfg.prior.fit_rows)[col]).float()
    clip_dim = int(manifest["clip"]["dim"]) if manifest.get("clip") else 0
    stats = FlowPrior(cfg.prior, codes.shape[1], codes.shape[2], clip_dim)
    stats.set_code_stats(codes)
    conds = condition_stats(pyramids_dir, None, cfg.prior.fit_rows) if clip_dim else {}
    return {"tokens": codes.shape[1], "dim": codes.shape[2], "clip_dim": clip_dim,
            "code_mean": stats.code_mean, "code_std": stats.code_std, **conds}, codes


def train_prior(cfg: Config, pyramids_dir: str | Path, run_dir: str | Path, resume: bool = False) -> dict:
    """Fit the PCA baseline, train the flow prior with Ray Train, write ``prior.safetensors`` and ``prior.json``.

    ``resume=True`` continues the prior run already in ``run_dir``.
    """
    run_dir = Path(run_dir).resolve()
    run = Run(run_dir)
    run_exists(run, "prior", resume)
    manifest = schema.read_manifest(pyramids_dir)
    cfg = dataclasses.replace(cfg, pyramids=bind_encoders(cfg.pyramids, manifest, str(pyramids_dir)))
    schema.check_manifest(manifest, levels=cfg.pyramids.sizes, where=str(pyramids_dir))
    cfg, _ = fit_to_rows(cfg, manifest["rows"])
    shape, sample = code_shape(cfg, pyramids_dir, manifest)
    run_dir.mkdir(parents=True, exist_ok=True)
    PCAGaussianPrior.fit(sample, cfg.prior.pca_components).save(run.prior_pca)
    del sample
    texts = text_table(cfg, pyramids_dir, manifest)
    cfg = resolved(cfg, texts)
    if texts is not None:  # the statistics of the captions' embeddings, not the images'
        shape |= condition_stats(pyramids_dir, texts, cfg.prior.fit_rows)
    names = prior_columns(cfg, shape["clip_dim"] > 0, with_text=texts is not None)
    dataset = parquet_dataset(pyramids_dir, names, manifest["rows"], cfg.prior.materialize, cfg.prior.num_workers,
                              transform=None if texts is None else add_text_column(texts))
    loop_config = {"cfg": to_dict(cfg), "run_dir": str(run_dir), "shape": shape, "fail_at_step": fail_at_step()}
    trainer = torch_trainer(_prior_fn, loop_config, cfg.prior, name=run.experiment("prior"),
                            storage_path=str(run_dir), dataset=dataset)
    start = time.time()
    result = fit(trainer)
    with result.checkpoint.as_directory() as d:
        checkpoint.export_ema(d, run.prior)
    figures = dict(result.return_value or {}) | {
        "time_s": round(time.time() - start, 1), "pyramids": str(Path(pyramids_dir).resolve()),
        "columns": names, "condition": manifest.get("clip"), "conditioned_on": cfg.prior.condition, "fit_rows": min(cfg.prior.fit_rows, manifest["rows"])}
    run.prior_figures.write_text(json.dumps(figures, indent=1))
    log.info("trained prior: %s (PCA baseline: %s)", run.prior, run.prior_pca)
    return figures
