"""The flow models' training loop, run by every worker: the prior's flow matching and its student's distillation.

Same :class:`~raydino.train.session.Session` (Ray Train DDP or
``LocalSession``), same checkpoint files and bitwise resume (weights, EMA,
optimizer, data position and every RNG), same NaN guard, fault injection
and TensorBoard writer as ``loop.py``. What differs between the two models
is a :class:`Job`: the network, the batch's columns and the loss.

The prior's batches hold the coarsest level's tokens and, when the pyramid
has them, the condition: its captions' text embeddings (one drawn per
step, ``train/conditions.py``) or the CLIP image embeddings. The student's
hold teacher pairs (``train/distill.py``): noise, the teacher's code, the
condition and the guidance scale.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from raydino.config import Config, DistillConfig, PriorConfig
from raydino.layout import Run
from raydino.models.flow_prior import FlowPrior, flow_matching_loss, metadata
from raydino.models.student import distillation_loss, student_of
from raydino.progress import CountFile
from raydino.pyramids import schema
from raydino.train import checkpoint
from raydino.train.checkpoint import Progress
from raydino.train.conditions import TEXT, pick
from raydino.train.monitor import RunLog
from raydino.train.runtime import check_bad_steps, data_stream, inject_fault, optimizer_step
from raydino.train.session import Session
from raydino.train.step import requires_grad, update_ema

# the student's pair columns (train/distill.py writes them)
NOISE, CODE, COND, GUIDANCE = "noise", "code", "cond", "guidance"

Loss = Callable[[nn.Module, dict[str, torch.Tensor], torch.Generator], torch.Tensor]


@dataclass
class Job:
    """One flow model's training: its name in logs and files, its config section, its network and its loss."""

    name: str                                # "prior" or "student"
    section: PriorConfig | DistillConfig     # steps, batch, optimizer, EMA, logging
    model: FlowPrior                         # the same initial weights on every rank
    loss: Loss
    tb: Path
    progress: Path                           # steps done, for the driver's progress line


def prior_columns(cfg: Config, with_clip: bool, with_text: bool = False) -> list[str]:
    """The pyramid columns the prior reads: the coarse level, and the CLIP embedding or the paths its captions join on."""
    return [schema.tokens_col(cfg.pyramids.sizes[0])] + ([schema.PATH] if with_text else
                                                         [schema.CLIP] if with_clip else [])


def new_prior(cfg: Config, shape: dict) -> FlowPrior:
    """The prior with its code (and condition) statistics set; the same weights on every rank (``prior.seed``).

    ``shape``: ``tokens``, ``dim``, ``clip_dim``, the per-channel
    ``code_mean``/``code_std`` the driver measured on a bounded sample, and
    ``cond_mean``/``cond_std`` of the conditions when there are any.
    """
    torch.manual_seed(cfg.prior.seed)
    model = FlowPrior(cfg.prior, shape["tokens"], shape["dim"], shape["clip_dim"])
    model.code_mean.copy_(shape["code_mean"])
    model.code_std.copy_(shape["code_std"])
    if model.cond_stats:
        model.cond_mean.copy_(shape["cond_mean"])
        model.cond_std.copy_(shape["cond_std"])
    return model


def prior_job(cfg: Config, run: Run, shape: dict, device: torch.device) -> Job:
    """Flow matching on the pyramid's codes."""
    pc = cfg.prior
    model = new_prior(cfg, shape).to(device)
    code_col, with_clip = schema.tokens_col(cfg.pyramids.sizes[0]), shape["clip_dim"] > 0

    def loss(net: nn.Module, batch: dict[str, torch.Tensor], rng: torch.Generator) -> torch.Tensor:
        x = model.standardise(batch[code_col].to(device))
        cond = (pick(batch[TEXT], rng).to(device) if TEXT in batch else
                batch[schema.CLIP].to(device) if with_clip else None)
        return flow_matching_loss(net, x, cond, rng, pc.clip_noise, pc.cond_dropout, pc.time_shift)

    return Job("prior", pc, model, loss, run.tb_prior, run.prior_progress)


def student_job(cfg: Config, run: Run, teacher: FlowPrior, device: torch.device) -> Job:
    """Distillation of ``teacher`` on its pairs: the student starts from its weights."""
    dc = cfg.distill
    torch.manual_seed(dc.seed)  # its new guidance input: the same weights on every rank and every run
    model = student_of(teacher, dc.sample_steps).to(device)

    def loss(net: nn.Module, batch: dict[str, torch.Tensor], rng: torch.Generator) -> torch.Tensor:
        cond = batch[COND].to(device).float() if COND in batch else None
        return distillation_loss(net, batch[NOISE].to(device).float(), batch[CODE].to(device).float(), cond,
                                 batch[GUIDANCE].to(device).float(), rng, dc.one_step_share)

    return Job("student", dc, model, loss, run.tb_student, run.student_progress)


def fit_flow(cfg: Config, run_dir: str | Path, session: Session, job: Job, fail_at_step: int = 0) -> dict:
    """Train ``job.section.steps`` steps; returns rank 0's final figures (others return ``{}``)."""
    sc, rank0, name = job.section, session.rank == 0, job.name
    run_dir = Path(run_dir)
    if sc.batch_size % session.world_size:
        raise ValueError(f"{name}: batch_size {sc.batch_size} is not a multiple of {session.world_size} workers")
    model = job.model
    ema = copy.deepcopy(model)
    requires_grad(ema, False)
    opt = torch.optim.AdamW(model.parameters(), lr=sc.lr, betas=(0.9, 0.99), weight_decay=sc.weight_decay)
    rng = torch.Generator().manual_seed(sc.seed * 1000 + session.rank)  # times, noise, perturbation, dropout
    restored = checkpoint.restore_latest(session.checkpoint_dirs(), rank=session.rank, model=model, ema=ema, opt=opt,
                                         rng=rng)
    progress = restored or Progress()
    resumed_from = restored.step if restored else None
    if restored and rank0:
        print(f"[{name}] resuming from the checkpoint of step {restored.step}", flush=True)
    net = session.prepare(model)
    monitor = RunLog(job.tb, purge_step=progress.step or None) if rank0 else None
    counter = CountFile(job.progress)  # steps done, for the driver's progress line (rank 0)
    stream = data_stream(session, progress, sc.batch_size // session.world_size)
    losses: list[float] = []
    metrics: dict[str, float] = {}
    while progress.step < sc.steps:
        loss = job.loss(net, next(stream), rng)
        ok, grad_norm = optimizer_step(loss, model.parameters(), opt, sc.grad_clip)
        progress.advance(sc.batch_size, ok)
        if rank0:
            counter.update(progress.step, force=progress.step == sc.steps)
        if ok:
            update_ema(ema, model, sc.ema_beta)
            losses.append(loss.item())
        else:
            check_bad_steps(progress, sc.max_bad_steps, name, "prior" if name == "prior" else "distill")
        inject_fault(run_dir, progress.step, fail_at_step, session)
        if rank0 and progress.step % sc.log_every == 0:
            rate = monitor.throughput(progress.images_seen)
            monitor.scalars({f"{name}/loss": loss.item(), f"{name}/grad_norm": float(grad_norm),
                             f"{name}/codes_per_s": rate, f"{name}/bad_steps": progress.bad_steps}, progress.step)
            print(f"[{name}] step {progress.step}/{sc.steps} loss {loss.item():.4f} {rate:.0f} codes/s", flush=True)
        if progress.step % sc.checkpoint_every == 0 or progress.step == sc.steps:
            metrics = {"step": progress.step, "codes_seen": progress.images_seen, "bad_steps": progress.bad_steps,
                       "loss": sum(losses) / max(len(losses), 1)}
            losses = []
            with tempfile.TemporaryDirectory() as d:
                checkpoint.save(d, rank=session.rank, model=model, ema=ema, opt=opt, progress=progress, rng=rng,
                                cfg=cfg, metadata=metadata(model))
                session.report(metrics, Path(d))
    stream.close()
    if not rank0:
        return {}
    monitor.close()
    return {**metrics, "step": progress.step, "resumed_from_step": resumed_from}


def fit_prior(cfg: Config, run_dir: str | Path, session: Session, shape: dict, fail_at_step: int = 0) -> dict:
    """Train the flow prior ``prior.steps`` steps (:func:`fit_flow`)."""
    return fit_flow(cfg, run_dir, session, prior_job(cfg, Run(run_dir), shape, session.device), fail_at_step)
