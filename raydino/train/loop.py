"""The training loop every worker runs: stages, steps, EMA, checkpoints, validation.

Read it top to bottom as the recipe: build the generator, its EMA and the
optimizer; resume from the newest readable checkpoint; then for each stage
of ``train.stages`` take ``ceil(images / batch_size)`` steps on this worker's
shard, fading the new block in, and report (with a checkpoint) every
``train.checkpoint_every`` steps and at each stage end. The data position
(epoch, batches consumed) and every RNG are in the checkpoint, so a resumed
run takes exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from raydino.config import Config, StageConfig
from raydino.layout import Run
from raydino.losses import DinoPyramidLoss
from raydino.models.generator import ProgressiveGenerator
from raydino.models.loading import Dino, load_dino
from raydino.progress import CountFile
from raydino.pyramids.batch import Targets
from raydino.train import checkpoint
from raydino.train.checkpoint import Progress
from raydino.train.monitor import HeldOutScore, RunLog, Validator
from raydino.train.runtime import check_bad_steps, data_stream, inject_fault, inputs_finite
from raydino.train.session import Session
from raydino.train.step import StepOutput, fade_alpha, requires_grad, train_step, update_ema


def build_models(cfg: Config, dino: Dino,
                 device: torch.device) -> tuple[ProgressiveGenerator, ProgressiveGenerator, torch.optim.Optimizer]:
    """The generator (same initial weights on every rank), its frozen EMA copy and the optimizer."""
    torch.manual_seed(cfg.train.seed)
    model = ProgressiveGenerator(cfg.model, dino.dim, cfg.pyramids.sizes[0] // dino.patch_size).to(device)
    ema = copy.deepcopy(model)
    requires_grad(ema, False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.stages[0].lr, betas=(0.9, 0.99),
                            weight_decay=cfg.train.weight_decay)
    return model, ema, opt


def log_step(monitor: RunLog, progress: Progress, stage: StageConfig, steps: int, alpha: float, out: StepOutput) -> None:
    """TensorBoard scalars and the terminal progress line (rank 0, every ``train.log_every`` steps)."""
    rate = monitor.throughput(progress.images_seen)
    monitor.scalars(out.terms.scalars() | {"train/lr": stage.lr, "train/alpha": alpha, "train/grad_norm": out.grad_norm,
                                           "train/images_per_s": rate, "train/bad_steps": progress.bad_steps},
                    progress.step)
    print(f"[train {stage.resolution}px] step {progress.stage_step}/{steps} images {progress.images_seen} "
          f"alpha {alpha:.2f} loss {out.terms.total.item():.4f} {rate:.1f} img/s", flush=True)


def stage_line(resolution: int, progress: Progress, metrics: dict[str, float]) -> str:
    """The end-of-stage summary: training rows under the training encoder, and held-out figures when there are."""
    line = (f"[train {resolution}px] stage done: {progress.images_seen} images; training rows, training encoder: "
            f"val/dist_unweighted {metrics['val/dist_unweighted']:.4f} (step 0: "
            f"{progress.baselines['step0/dist_unweighted']:.4f}, mean image: "
            f"{progress.baselines['mean_image/dist_unweighted']:.4f})")
    if "heldout/eval_dist" in metrics:
        line += (f"; held-out, evaluation encoder: heldout/eval_dist {metrics['heldout/eval_dist']:.4f} "
                 f"(step 0: {metrics['step0/heldout_eval_dist']:.4f}, n={int(metrics['heldout/n'])})")
    return line


def fit_generator(cfg: Config, pyramid_dir: str | Path, run_dir: str | Path, session: Session, fail_at_step: int = 0,
        holdout: dict | None = None) -> dict:
    """Train through every stage; returns rank 0's final metrics (others return ``{}``).

    Pyramid rows with non-finite values end the run on every rank at once,
    returning ``nonfinite_input_step``: the driver names the shard.

    ``holdout`` (``rows``, ``images``, ``encoder``, ``set``; from
    ``preflight.holdout_payload``) adds the held-out figures at step 0 and at
    each stage end; every later report carries the latest of them.
    """
    tc, sizes, device, rank0 = cfg.train, cfg.pyramids.sizes, session.device, session.rank == 0
    run_dir = Path(run_dir)
    run = Run(run_dir)
    dino = load_dino(cfg.pyramids.dino, device)
    model, ema, opt = build_models(cfg, dino, device)
    rng = torch.Generator().manual_seed(tc.seed * 1000 + session.rank)  # noise and shifts: per rank, checkpointed
    restored = checkpoint.restore_latest(session.checkpoint_dirs(), rank=session.rank, model=model, ema=ema, opt=opt,
                                         rng=rng)
    progress = restored or Progress()
    resumed_from = restored.step if restored else None  # progress (the same object) moves on from here
    if restored and rank0:
        print(f"[train] resuming from the checkpoint of step {restored.step} (stage {progress.stage + 1} of "
              f"{len(tc.stages)}): a restarted or resumed run continues exactly where that checkpoint left off",
              flush=True)
    net = session.prepare(model)
    loss_fn = DinoPyramidLoss(dino, sizes, cfg.loss)
    final_res = tc.stages[-1].resolution

    validator = monitor = heldout = None
    counter = CountFile(run.progress)  # images seen, for the driver's progress line (rank 0 writes it)
    if rank0:
        validator = Validator(dino, sizes, pyramid_dir, tc.val_count, cfg.model.noise_dim, final_res, tc.seed, device)
        monitor = RunLog(run.tb, purge_step=progress.step or None)
        if holdout:
            heldout = HeldOutScore(load_dino(holdout["encoder"], device), holdout["rows"], holdout["images"], sizes,
                                   cfg.model.noise_dim, final_res, tc.seed, device)
        if not progress.baselines:
            progress.baselines = validator.baselines(ema, final_res)
            if heldout:
                progress.heldout = heldout(ema, tc.stages[0].resolution)
                progress.baselines["step0/heldout_eval_dist"] = progress.heldout["heldout/eval_dist"]
                monitor.scalars(progress.heldout, 0)

    def validate(resolution: int, alpha: float) -> dict[str, float]:
        val, images = validator.evaluate(ema, resolution, alpha)
        monitor.scalars(val, progress.step)
        monitor.grid(validator.grid(images), resolution, progress.step, run.grid(resolution))
        return val

    def report(resolution: int, alpha: float) -> dict[str, float]:
        """Validation metrics (rank 0) and a checkpoint (every rank's part), reported together."""
        metrics = {"stage": resolution, "step": progress.step, "images_seen": progress.images_seen,
                   "alpha": alpha, "bad_steps": progress.bad_steps, "stages_done": progress.stage}
        if rank0:
            metrics |= validate(resolution, alpha) | progress.baselines | progress.heldout
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(d, rank=session.rank, model=model, ema=ema, opt=opt, progress=progress, rng=rng, cfg=cfg,
                            metadata=checkpoint.generator_metadata(model))
            session.report(metrics, Path(d))
        return metrics

    while progress.stage < len(tc.stages):
        stage = tc.stages[progress.stage]
        steps, first = stage.steps, progress.stage == 0
        if stage.batch_size % session.world_size:
            raise ValueError(f"stage {stage.resolution}px: batch_size {stage.batch_size} is not a multiple "
                             f"of {session.world_size} workers")
        for group in opt.param_groups:
            group["lr"] = stage.lr
        stream = data_stream(session, progress, stage.batch_size // session.world_size)
        for _ in range(progress.stage_step, steps):
            alpha = fade_alpha(stage, progress.stage_step, first)
            targets = Targets.from_batch(next(stream), sizes, device)
            if not inputs_finite([*targets.tokens, *targets.cls]):
                stream.close()
                return {"nonfinite_input_step": progress.step + 1}
            noise = model.draw_noise(len(targets.code) * loss_fn.draws, stage.resolution, rng, device)
            out = train_step(net, opt, loss_fn, targets, noise, stage.resolution, alpha, grad_clip=tc.grad_clip,
                             bf16=tc.bf16, rng=rng)
            progress.advance(stage.batch_size, out.ok)
            if rank0:
                counter.update(progress.images_seen, force=progress.stage_step == steps)
            if out.ok:
                update_ema(ema, model, tc.ema_beta)
            else:
                check_bad_steps(progress, tc.max_bad_steps, f"stage {stage.resolution}px", "train")
            inject_fault(run_dir, progress.step, fail_at_step, session)
            if rank0 and progress.step % tc.log_every == 0:
                log_step(monitor, progress, stage, steps, alpha, out)
            if progress.stage_step == steps:
                progress.next_stage()
                if heldout:
                    progress.heldout = heldout(ema, stage.resolution, fade_alpha(stage, steps, first))
                    monitor.scalars(progress.heldout, progress.step)
                metrics = report(stage.resolution, fade_alpha(stage, steps, first))
                if rank0:
                    print(stage_line(stage.resolution, progress, metrics), flush=True)
            elif progress.step % tc.checkpoint_every == 0:
                report(stage.resolution, alpha)
            elif rank0 and progress.step % tc.sample_every == 0:
                validate(stage.resolution, alpha)
        stream.close()

    if not rank0:
        return {}
    val, _ = validator.evaluate(ema, final_res)
    monitor.close()
    return {"stage": final_res, "step": progress.step, "images_seen": progress.images_seen,
            "bad_steps": progress.bad_steps, "resumed_from_step": resumed_from,
            **val, **progress.baselines, **progress.heldout,
            "encoder": f"training DINOv2 {dino.source} (hash {dino.hash})",
            **({"heldout_set": holdout["set"], "eval_encoder": holdout["encoder"]} if holdout else {})}
