"""``raydino distill-prior``: the prior's few-step student, trained on its teacher's own samples.

Two Ray steps. Ray Data maps the teacher across actors (GPU actors on a
cluster, as the pyramids' extraction does): each of ``distill.pairs`` rows
draws a noise, a training condition and a guidance scale from its own
seed, and the teacher's guided flow (``distill.teacher_steps`` Heun
steps, two evaluations each) carries the noise to a code. Ray Train then
fits the student to those pairs through the prior's loop
(:func:`~raydino.train.prior_loop.fit_flow`: checkpoints, bitwise resume,
TensorBoard, progress). The student's EMA weights land in
``RUN_DIR/prior-student.safetensors``, where sampling, serving and
evaluation take them by default.

The pairs are a function of the teacher and ``distill.seed`` alone, so a
resumed run draws them again bit for bit instead of storing them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import ray
import ray.data
import torch
import torch.nn.functional as F

from raydino.config import Config, DistillConfig, from_dict, to_dict
from raydino.layout import Run
from raydino.models.flow_prior import FlowPrior
from raydino.models.saved import load_prior
from raydino.models.student import teacher_codes
from raydino.pyramids import schema
from raydino.train import checkpoint
from raydino.train.conditions import text_table
from raydino.train.preflight import run_exists
from raydino.train.prior_loop import CODE, COND, GUIDANCE, NOISE, fit_flow, student_job
from raydino.train.trainer import RaySession, fail_at_step, fit, torch_trainer, worker_setup

log = logging.getLogger(__name__)


def training_conditions(cfg: Config, pyramids_dir: str | Path, teacher: FlowPrior) -> np.ndarray | None:
    """Unit conditions of the kind the teacher was trained on, ``[N, clip_dim]``; None for an unconditional prior.

    Every caption variant of every row (``prior.condition: text``), or every
    row's CLIP image embedding.
    """
    if not teacher.clip_dim:
        return None
    manifest = schema.read_manifest(pyramids_dir)
    texts = text_table(cfg, pyramids_dir, manifest) if teacher.cfg.condition == "text" else None
    conds = (np.concatenate(list(texts.values())) if texts is not None else
             schema.load_arrays(pyramids_dir, [schema.CLIP])[schema.CLIP])
    return F.normalize(torch.from_numpy(conds.astype(np.float32)), dim=-1).numpy()


def draw(rows: np.ndarray, dc: DistillConfig, tokens: int, dim: int, n_conds: int) -> dict[str, np.ndarray]:
    """Each row's noise, condition index and guidance scale, from ``(distill.seed, row)`` alone."""
    noise, index, guidance = [], [], []
    low, high = dc.guidance
    for row in rows:
        g = torch.Generator().manual_seed(dc.seed * 1_000_003 + int(row))
        noise.append(torch.randn(tokens, dim, generator=g))
        u = torch.rand(3, generator=g)
        index.append(int(u[0] * n_conds) if n_conds else 0)
        # the unconditional pairs: guidance 0, the null model's own flow
        guidance.append(0.0 if not n_conds or u[1] < dc.uncond_share else float(low + (high - low) * u[2]))
    return {NOISE: torch.stack(noise).numpy(), "index": np.array(index), GUIDANCE: np.array(guidance, np.float32)}


class TeacherPairs:
    """A Ray Data actor: the teacher, loaded once, turning rows into (noise, condition, guidance, code) pairs."""

    def __init__(self, run_dir: str, dc: dict, conds: np.ndarray | None, use_gpu: bool):
        torch.set_num_threads(max(1, int(dc["cpus_per_worker"])))
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.teacher = load_prior(Run(run_dir), self.device, teacher=True)
        self.dc = DistillConfig(**dc)
        self.conds = conds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = self.teacher
        pairs = draw(batch["id"], self.dc, t.tokens, t.dim, 0 if self.conds is None else len(self.conds))
        noise = torch.from_numpy(pairs[NOISE]).to(self.device)
        guidance = torch.from_numpy(pairs[GUIDANCE]).to(self.device)
        index = pairs.pop("index")
        cond = None if self.conds is None else torch.from_numpy(self.conds[index]).to(self.device)
        code = teacher_codes(t, noise, cond, guidance, self.dc.teacher_steps)
        return pairs | {CODE: code.cpu().numpy()} | ({} if cond is None else {COND: cond.cpu().numpy()})


def teacher_pairs(cfg: Config, run_dir: Path, conds: np.ndarray | None) -> ray.data.Dataset:
    """``distill.pairs`` teacher pairs, held in the object store, one equal block per training worker."""
    dc = cfg.distill
    dataset = ray.data.range(dc.pairs)
    dataset.context.execution_options.preserve_order = True
    dataset = dataset.map_batches(
        TeacherPairs, batch_size=dc.teacher_batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=dc.actors),
        # one CPU reserved (the range's read tasks need one beside it on a 2-core node), cpus_per_worker threads
        num_cpus=1, num_gpus=dc.gpus_per_worker if dc.use_gpu else 0,
        fn_constructor_kwargs={"run_dir": str(run_dir), "dc": to_dict(dc), "conds": conds, "use_gpu": dc.use_gpu})
    return dataset.repartition(dc.num_workers).materialize()


def _student_fn(loop_config: dict) -> dict:
    """Runs on every Ray Train worker."""
    cfg = from_dict(loop_config["cfg"])
    worker_setup(cfg.distill)
    session = RaySession(cfg.distill.seed, cfg.distill.shuffle_buffer)
    run = Run(loop_config["run_dir"])
    teacher = load_prior(run, session.device, teacher=True)  # the student starts from its weights
    return fit_flow(cfg, run.path, session, student_job(cfg, run, teacher, session.device),
                    fail_at_step=loop_config["fail_at_step"])


def distill_prior(cfg: Config, pyramids_dir: str | Path, run_dir: str | Path, resume: bool = False) -> dict:
    """Draw the teacher's pairs with Ray Data, fit the student with Ray Train, write ``prior-student.safetensors``.

    ``cfg``: the run's config with ``distill.*``; ``pyramids_dir``: the pyramid
    the prior trained on (its conditions); ``resume=True`` continues the
    student run already in ``run_dir``.
    """
    run = Run(Path(run_dir).resolve())
    teacher = load_prior(run, teacher=True)
    if teacher is None:
        raise FileNotFoundError(f"{run.path}: no prior to distil ({run.prior.name} missing): train it first with "
                                "`raydino train-prior`")
    run_exists(run, "student", resume, flag="--run")
    start = time.time()
    conds = training_conditions(cfg, pyramids_dir, teacher)
    dataset = teacher_pairs(cfg, run.path, conds)
    pairs_s = round(time.time() - start, 1)
    log.info("distill: %d teacher pairs in %.1fs (K=%d heun, guidance %s, %d conditions)", cfg.distill.pairs,
             pairs_s, cfg.distill.teacher_steps, cfg.distill.guidance, 0 if conds is None else len(conds))
    loop_config = {"cfg": to_dict(cfg), "run_dir": str(run.path), "fail_at_step": fail_at_step()}
    trainer = torch_trainer(_student_fn, loop_config, cfg.distill, name=run.experiment("student"),
                            storage_path=str(run.path), dataset=dataset)
    result = fit(trainer)
    with result.checkpoint.as_directory() as d:
        checkpoint.export_ema(d, run.student)
    figures = dict(result.return_value or {}) | {
        "time_s": round(time.time() - start, 1), "pairs_time_s": pairs_s, "pairs": cfg.distill.pairs,
        "teacher": teacher.describe(cfg.distill.teacher_steps), "student": f"K={cfg.distill.sample_steps} euler",
        "guidance": cfg.distill.guidance, "conditions": 0 if conds is None else len(conds),
        "pyramids": str(Path(pyramids_dir).resolve())}
    run.student_figures.write_text(json.dumps(figures, indent=1))
    log.info("distilled the prior: %s", run.student)
    return figures
