"""The prior's training loop, run by every worker: the generator's machinery around a flow-matching step.

Same :class:`~raydino.train.session.Session` (Ray Train DDP or
``LocalSession``), same checkpoint files and bitwise resume (weights, EMA,
optimizer, data position and every RNG), same NaN guard, fault injection
and TensorBoard writer as ``loop.py``; only the model and its loss differ.
Each batch holds the coarsest level's tokens and, when the pyramid has
them, the condition: its captions' text embeddings (one drawn per step,
``train/conditions.py``) or the CLIP image embeddings.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from raydino.config import Config
from raydino.layout import Run
from raydino.models.flow_prior import FlowPrior, flow_matching_loss, metadata
from raydino.progress import CountFile
from raydino.pyramids import schema
from raydino.train import checkpoint
from raydino.train.checkpoint import Progress
from raydino.train.conditions import TEXT, pick
from raydino.train.monitor import RunLog
from raydino.train.runtime import check_bad_steps, data_stream, inject_fault, optimizer_step
from raydino.train.session import Session
from raydino.train.step import requires_grad, update_ema


def prior_columns(cfg: Config, with_clip: bool, with_text: bool = False) -> list[str]:
    """The pyramid columns the prior reads: the coarse level, and the CLIP embedding or the paths its captions join on."""
    return [schema.tokens_col(cfg.pyramids.sizes[0])] + ([schema.PATH] if with_text else
                                                         [schema.CLIP] if with_clip else [])


def build_prior(cfg: Config, shape: dict, device: torch.device) -> tuple[FlowPrior, FlowPrior, torch.optim.Optimizer]:
    """The prior (same initial weights on every rank, the code statistics set), its EMA and the optimizer.

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
    model.to(device)
    ema = copy.deepcopy(model)
    requires_grad(ema, False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.prior.lr, betas=(0.9, 0.99), weight_decay=cfg.prior.weight_decay)
    return model, ema, opt


def fit_prior(cfg: Config, run_dir: str | Path, session: Session, shape: dict, fail_at_step: int = 0) -> dict:
    """Train ``prior.steps`` steps; returns rank 0's final figures (others return ``{}``)."""
    pc, device, rank0 = cfg.prior, session.device, session.rank == 0
    run_dir = Path(run_dir)
    run = Run(run_dir)
    if pc.batch_size % session.world_size:
        raise ValueError(f"prior.batch_size {pc.batch_size} is not a multiple of {session.world_size} workers")
    model, ema, opt = build_prior(cfg, shape, device)
    rng = torch.Generator().manual_seed(pc.seed * 1000 + session.rank)  # times, noise, perturbation, dropout
    restored = checkpoint.restore_latest(session.checkpoint_dirs(), rank=session.rank, model=model, ema=ema, opt=opt,
                                         rng=rng)
    progress = restored or Progress()
    resumed_from = restored.step if restored else None
    if restored and rank0:
        print(f"[prior] resuming from the checkpoint of step {restored.step}", flush=True)
    net = session.prepare(model)
    monitor = RunLog(run.tb_prior, purge_step=progress.step or None) if rank0 else None
    counter = CountFile(run.prior_progress)  # steps done, for the driver's progress line (rank 0)
    code_col, with_clip = schema.tokens_col(cfg.pyramids.sizes[0]), shape["clip_dim"] > 0
    stream = data_stream(session, progress, pc.batch_size // session.world_size)
    losses: list[float] = []
    metrics: dict[str, float] = {}
    while progress.step < pc.steps:
        batch = next(stream)
        x = model.standardise(batch[code_col].to(device))
        cond = (pick(batch[TEXT], rng).to(device) if TEXT in batch else
                batch[schema.CLIP].to(device) if with_clip else None)
        loss = flow_matching_loss(net, x, cond, rng, pc.clip_noise, pc.cond_dropout, pc.time_shift)
        ok, grad_norm = optimizer_step(loss, model.parameters(), opt, pc.grad_clip)
        progress.advance(pc.batch_size, ok)
        if rank0:
            counter.update(progress.step, force=progress.step == pc.steps)
        if ok:
            update_ema(ema, model, pc.ema_beta)
            losses.append(loss.item())
        else:
            check_bad_steps(progress, cfg.prior.max_bad_steps, "prior", "prior")
        inject_fault(run_dir, progress.step, fail_at_step, session)
        if rank0 and progress.step % pc.log_every == 0:
            rate = monitor.throughput(progress.images_seen)
            monitor.scalars({"prior/loss": loss.item(), "prior/grad_norm": float(grad_norm), "prior/codes_per_s": rate,
                             "prior/bad_steps": progress.bad_steps}, progress.step)
            print(f"[prior] step {progress.step}/{pc.steps} loss {loss.item():.4f} {rate:.0f} codes/s", flush=True)
        if progress.step % pc.checkpoint_every == 0 or progress.step == pc.steps:
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
