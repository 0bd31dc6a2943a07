"""Loading what a run holds: the generator, the flow prior, the PCA baseline, checkpoint files.

:mod:`raydino.layout` says where each file is; this module reads them into
models, without Ray and without any training code, so sampling, evaluation
and the report load a finished run the same way. A missing, truncated or
mismatched file is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from raydino.config import Config, load_config
from raydino.layout import CONFIG, Run
from raydino.models.flow_prior import FlowPrior, prior_from_header
from raydino.models.generator import ProgressiveGenerator
from raydino.models.pca_prior import PCAGaussianPrior

T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A weights, state or config file that is missing, truncated or corrupt."""


def read_file(path: Path, reader: Callable[[Path], T]) -> T:
    """``reader(path)``; a missing or unreadable file is a :class:`CheckpointError` naming it."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return reader(path)
    except Exception as exc:  # safetensors, zip and json each raise their own types
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc


def header(path: Path) -> dict[str, str]:
    """A safetensors file's header: what the model is rebuilt from."""
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def load_weights(path: Path, model: nn.Module) -> None:
    state = read_file(path, lambda p: load_file(str(p)))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint file {path} does not fit this model ({exc})") from exc


def load_generator(directory: str | Path, device: str | torch.device = "cpu",
                   weights: str = Run.GENERATOR) -> tuple[ProgressiveGenerator, Config]:
    """A generator and its config from a finished run, or from a checkpoint with ``weights=Checkpoint.EMA``."""
    directory = Path(directory)
    path = directory / weights
    cfg = load_config(config_file=str(directory / CONFIG))
    meta = read_file(path, header)
    model = ProgressiveGenerator(cfg.model, int(meta["code_tokens_dim"]), int(meta["grid"]))
    load_weights(path, model)
    return model.eval().requires_grad_(False).to(device), cfg


def load_prior(run: Run, device: str | torch.device = "cpu", teacher: bool = False) -> FlowPrior | None:
    """A run's flow prior: its distilled student where there is one, unless ``teacher``; None when it has none."""
    path = run.student if run.student.is_file() and not teacher else run.prior
    if not path.is_file():
        return None
    model = prior_from_header(read_file(path, header))
    load_weights(path, model)
    return model.eval().requires_grad_(False).to(device)


def load_pca(run: Run) -> PCAGaussianPrior | None:
    """A run's PCA Gaussian baseline, None when it has none."""
    return PCAGaussianPrior.load(run.prior_pca) if run.prior_pca.is_file() else None
