"""The main job (``raydino run``): every stage of the pipeline, each resumable.

Each step declares the output that proves it finished; a rerun skips finished
steps, so a crash costs only the step it happened in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raydino.config import Config, save_config
from raydino.data.synth_faces import METADATA as FACES_METADATA
from raydino.data_fit import MIN_EVAL_ROWS, fit_to_rows
from raydino.layout import Output, Run, Samples, read_json
from raydino.lock import hold
from raydino.progress import Tracker, counted, watch
from raydino.pyramids import schema
from raydino.ray_init import init_ray

log = logging.getLogger(__name__)


@dataclass
class Step:
    name: str
    marker: Path
    action: Callable[[], object]
    needs_ray: bool = False
    complete: Callable[[Path], bool] = Path.exists  # is ``marker`` proof enough that the step finished?
    progress: Callable[[], Tracker] | None = None  # its done / total while it runs (extraction shows its own)


def _faces(cfg: Config, out: Path, count: int | None = None, seed: int | None = None) -> Path:
    from raydino.data.synth_faces import write_faces

    return write_faces(out, count or cfg.data.synth_count, seed=cfg.data.seed if seed is None else seed,
                       size=cfg.data.synth_size)


def _models(cfg: Config, faces: Path, out: Path) -> None:
    """The demo's encoders learn from the synthetic ``faces``; its CLIP from the captions of the run's images.

    With ``--images``, the captions are the training side's only (the
    held-out split applies), or none (text control is off, :func:`text_plan`).
    """
    from raydino.data.captions import caption_pairs
    from raydino.data.sources import Split
    from raydino.models.shipping import copy_shipped, recipe, shipped_build
    from raydino.models.tiny import folders, write_tiny_models

    captions = None
    if cfg.data.images:
        pairs = caption_pairs(cfg.data.images, Split("train", cfg.data.holdout_fraction, cfg.eval.n))
        captions = (pairs, cfg.data.images)
    elif cfg.tiny.shipped and (shipped := shipped_build(recipe(cfg))):
        log.info("tiny models: the package's build of this recipe (%s), trained from the same faces, seed and "
                 "steps; `raydino tiny-models --preset %s --ship --out DIR` rebuilds "
                 "it, tiny.shipped=false trains them all here", shipped, cfg.preset)
        copy_shipped(shipped, out, folders(cfg))
        return
    write_tiny_models(out, faces, seed=cfg.data.seed, budget=cfg.tiny, sizes=cfg.pyramids.sizes, captions=captions,
                      recipe=None if cfg.data.images else recipe(cfg), names=folders(cfg))


def _pyramids(cfg: Config, images: Path, out: Path, part: str | None = None) -> None:
    """One pyramid of ``images``; ``part`` picks a side of the deterministic held-out split."""
    from raydino.data.sources import Split
    from raydino.pyramids.extract import build_pyramids

    split = Split(part, cfg.data.holdout_fraction, cfg.eval.n) if part else None
    build_pyramids(cfg.pyramids, str(images), out, split=split)


def _train(cfg: Config, pyramids: Path, run: Run, holdout: Path) -> None:
    from raydino.train.trainer import train

    train(cfg, pyramids, run.path, resume=run.started(), holdout=holdout)  # resume: a crashed earlier attempt


def _flow(cfg: Config, model: str, pyramids: Path, run: Run) -> None:
    """The flow ``prior`` or its ``student``, from the run's config (its encoders bound to the pyramid).

    The student's ``distill.*`` are this command's: a run trained before it had a student keeps its own.
    """
    from raydino.train.distill import distill_prior
    from raydino.train.prior_trainer import train_prior

    if model == "prior":
        train_prior(run.config_of(), pyramids, run.path, resume=run.started(model))
    else:
        distill_prior(dataclasses.replace(run.config_of(), distill=cfg.distill), pyramids, run.path,
                      resume=run.started(model))


def _compare(cfg: Config, kind: str, pyramids: Path, holdout: Path, run: Run) -> None:
    """The same schedule with ``loss.kind = kind``, trained and evaluated: the report's comparison for the detail figures."""
    from raydino.evaluation.evaluate import evaluate

    _train(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, kind=kind)), pyramids, run, holdout)
    evaluate(run.path, holdout, n=cfg.eval.n, seed=cfg.sample.seed)


def _tune(cfg: Config, pyramids: Path, holdout: Path, sweep: Path) -> None:
    from raydino.sweep.tune import tune_sweep

    tune_sweep(cfg, pyramids, sweep, holdout=holdout)


def _eval(cfg: Config, run: Run, pyramids: Path) -> None:
    from raydino.evaluation.evaluate import evaluate

    if cfg.eval.n < MIN_EVAL_ROWS:  # fitted.json and the report say why
        log.warning("evaluation skipped: %d held-out rows, the figures need at least %d", cfg.eval.n, MIN_EVAL_ROWS)
        return
    evaluate(run.path, pyramids, n=cfg.eval.n, seed=cfg.sample.seed, prompts=cfg.sample.prompts)


def _samples(cfg: Config, run: Run, held_out: Path, out: Path, compare: Run | None) -> None:
    """Sample grids from held-out images (never training ones), both priors, the prompts and a mix.

    The noise grids (4 held-out codes, 8 draws each) are drawn for the run and
    for its comparison run, with the same images and seeds.
    """
    from raydino.pyramids import schema
    from raydino.sampling import Sampler, noise_grid, sample

    images = [str(p) for p in schema.read_first_rows(held_out, [schema.PATH], 4)[schema.PATH]]
    images += images[:1] * (3 - len(images))  # a held-out side of one or two images: the mix reuses them
    n, seed = cfg.sample.n, cfg.sample.seed
    sampler = Sampler(run.path)  # one load of the generator, prior and encoders for every grid
    noise_grid(sampler, images, out / Samples.NOISE, n=8, seed=seed)
    if compare:
        noise_grid(compare.path, images, out / Samples.NOISE_COMPARE, n=8, seed=seed)
    sample(sampler, out / Samples.IMAGE, from_image=str(images[0]), n=n, seed=seed)
    sample(sampler, out / Samples.VARY, from_image=str(images[0]), vary=0.5, n=n, seed=seed)
    sample(sampler, out / Samples.PRIOR, prior="flow", n=n, seed=seed)
    sample(sampler, out / Samples.PRIOR_PCA, prior="pca", n=n, seed=seed)
    if cfg.pyramids.clip and cfg.sample.prompts:
        sample(sampler, out / Samples.PROMPTS, prompts=cfg.sample.prompts, n=n, seed=seed)
        sample(sampler, out / Samples.EDITS, from_image=str(images[0]), prompts=cfg.sample.prompts,
               vary=cfg.sample.edit_t, n=n, seed=seed)
    sample(sampler, out / Samples.MIX, mix=[str(images[1]), str(images[2])], region="top", seed=seed)


def _report(out: Output) -> None:
    from raydino.report import write_report

    write_report(out.run.path, sweep=out.sweep.path, pyramids=out.pyramids, samples=out.samples, out=out.report)


def fitted(cfg: Config, out: Output) -> Config:
    """``cfg`` with its batches and ``eval.n`` fitted to the pyramids' rows; the changes go to ``OUT/fitted.json``."""
    rows = schema.read_manifest(out.pyramids)["rows"]
    held_out = schema.read_manifest(out.pyramids_val)["rows"]
    sized, notes = fit_to_rows(cfg, rows, held_out)
    out.fitted.write_text(json.dumps({"training_rows": rows, "held_out_rows": held_out, "changes": notes}, indent=1))
    return sized


def plan(cfg: Config) -> list[Step]:
    """The steps of a run, in order, each with the file that proves it finished."""
    from raydino.models.tiny import SUMMARY as TINY_SUMMARY
    from raydino.sweep.tune import sweep_progress

    out = Output(cfg.out)
    steps = []
    synth = out.faces  # the data without --images; the demo's encoders learn from it either way
    if not cfg.data.images or cfg.tiny.build:
        steps.append(Step("synthetic faces", synth / FACES_METADATA, lambda: _faces(cfg, synth)))
    if cfg.data.images:
        faces, val_faces = Path(cfg.data.images), None
    else:
        faces, val_faces = synth, out.faces_val
        steps.append(Step("held-out faces", val_faces / FACES_METADATA,
                          lambda: _faces(cfg, val_faces, count=cfg.eval.n, seed=cfg.data.seed + 10_000)))
    if cfg.tiny.build:
        steps.append(Step("tiny models", out.models / TINY_SUMMARY, lambda: _models(cfg, synth, out.models)))
    pyramids, val_pyramids = out.pyramids, out.pyramids_val
    # a user's folder is split in two by path hash; the demo's held-out faces are a separate generated set
    train_part, val_part, val_source = ("train", "holdout", faces) if val_faces is None else (None, None, val_faces)
    steps.append(Step("feature pyramids", schema.manifest_path(pyramids),
                      lambda: _pyramids(cfg, faces, pyramids, train_part), needs_ray=True,
                      complete=lambda m: schema.finished_manifest(m.parent) is not None))
    steps.append(Step("held-out pyramids", schema.manifest_path(val_pyramids),
                      lambda: _pyramids(cfg, val_source, val_pyramids, val_part), needs_ray=True,
                      complete=lambda m: schema.finished_manifest(m.parent) is not None))
    run, sweep = out.run, out.sweep
    sized = functools.cache(lambda: fitted(cfg, out))  # read once the pyramids exist
    steps.append(Step("progressive training", run.generator, lambda: _train(sized(), pyramids, run, val_pyramids),
                      needs_ray=True, progress=lambda: counted("training", sized().train.images, "images", run.path,
                                                               Run.PROGRESS)))
    kind = cfg.eval.compare_loss
    compare = out.compare(kind) if kind and kind != cfg.loss.kind else None
    if compare:
        steps.append(Step(f"comparison: the same run with loss.kind={kind}", compare.eval,
                          lambda: _compare(sized(), kind, pyramids, val_pyramids, compare), needs_ray=True,
                          progress=lambda: counted("comparison training", sized().train.images, "images",
                                                   compare.path, Run.PROGRESS)))
    steps.append(Step("flow prior", run.prior, lambda: _flow(cfg, "prior", pyramids, run), needs_ray=True,
                      progress=lambda: counted("flow prior", cfg.prior.steps, "steps", run.path, Run.PRIOR_PROGRESS)))
    if cfg.distill.steps > 0:  # distill.steps=0: sampling stays with the prior's K steps
        steps.append(Step("one-step prior (distillation)", run.student, lambda: _flow(cfg, "student", pyramids, run),
                          needs_ray=True, progress=lambda: counted("student", cfg.distill.steps, "steps", run.path,
                                                                   Run.STUDENT_PROGRESS)))
    if cfg.tune.trials > 0:  # tune.trials=0: a run without the sweep
        steps.append(Step("loss-weight sweep", sweep.best, lambda: _tune(sized(), pyramids, val_pyramids, sweep.path),
                          needs_ray=True, progress=lambda: sweep_progress(cfg, sweep)))
    steps += [
        Step("evaluation", run.eval, lambda: _eval(sized(), run, val_pyramids)),
        Step("samples", out.samples / Samples.MIX, lambda: _samples(sized(), run, val_pyramids, out.samples, compare)),
        Step("report", out.report, lambda: _report(out)),
    ]
    return steps


def preflight(cfg: Config) -> Config:
    """Everything the run will need is there and fits, before anything is written or Ray starts.

    The output folder is writable; the images decode; the data can fill at
    least one batch per worker once batches are fitted to it
    (:mod:`raydino.data_fit`, here from the file count, later from the
    pyramids' rows); the models are there; the sweep's search space is
    valid. Raises :class:`~raydino.errors.UserError` or
    :class:`~raydino.config.ConfigError`. Returns ``cfg``, without the CLIP
    column when :func:`~raydino.data.captions.text_plan` turns text control
    off, and says so.
    """
    from raydino.data.captions import text_plan
    from raydino.data.sources import Split
    from raydino.errors import require_images, require_models, require_writable
    from raydino.sweep.tune import check_sweep

    require_writable(cfg.out, "--out")
    if cfg.data.images:
        files = require_images(cfg.data.images, min_side=cfg.pyramids.min_side, max_pixels=cfg.pyramids.max_pixels)
        held_out = Split("holdout", cfg.data.holdout_fraction, cfg.eval.n).held_out_count(files)
        fit_to_rows(cfg, files - held_out, held_out, where=f"--images {cfg.data.images}", quiet=True)
    else:
        fit_to_rows(cfg, cfg.data.synth_count, cfg.eval.n, where=f"data.synth_count={cfg.data.synth_count}",
                    quiet=True)
    require_models(cfg)
    if cfg.tune.trials > 0:
        check_sweep(cfg, holdout=Output(cfg.out).pyramids_val)
    text = text_plan(cfg)
    log.info("text control: %s", text.reason)
    return cfg if text.on else dataclasses.replace(cfg, pyramids=dataclasses.replace(cfg.pyramids, clip=""))


def run(cfg: Config, address: str | None = None, ray_progress: bool = False) -> None:
    """Run every unfinished step and say where the outputs are.

    Each long step shows its own progress line (:mod:`raydino.progress`);
    ``ray_progress`` adds Ray Data's per-operator bars (:func:`init_ray` sets them before each Ray step).
    """
    cfg = preflight(cfg)
    out = Output(cfg.out)
    with hold(out.root, "raydino run"):
        save_config(cfg, out.config)
        _run_steps(plan(cfg), address, ray_progress)
    print_summary(out)


def _run_steps(steps: list[Step], address: str | None, ray_progress: bool) -> None:
    start = time.time()
    for i, step in enumerate(steps, 1):
        if step.complete(step.marker):
            print(f"[{i}/{len(steps)}] {step.name}: done already ({step.marker.parent})", flush=True)
            continue
        t0 = time.time()
        print(f"[{i}/{len(steps)}] {step.name} ...", flush=True)
        if step.needs_ray:
            init_ray(address, data_progress=ray_progress)
        with watch(step.progress()) if step.progress else contextlib.nullcontext():
            step.action()
        print(f"[{i}/{len(steps)}] {step.name}: {time.time() - t0:.1f}s -> {step.marker.parent}", flush=True)
    print(f"raydino run finished in {time.time() - start:.1f}s", flush=True)


def print_summary(out: Output) -> None:
    """Where everything is, the key figures, and how to look at them."""
    lines = [f"outputs under {out.root.resolve()}", f"  pyramids     {out.pyramids}", f"  run          {out.run.path}", f"  sweep        {out.sweep.path}",
             f"  samples      {out.samples}", f"  report       {out.report.resolve()}"]
    figures = out.run.figures() or {}
    for key in ("train_encoder/dist_unweighted", "fd_dinov2/reconstructions", "fd_dinov2/prior", "fd_dinov2/prior_pca",
                "colour_error", "clip_score/matched", "clip_score/mismatched"):
        if key in figures:
            lines.append(f"  {key:<30} {figures[key]:.4f}")
    if best := read_json(out.sweep.best):
        lines.append(f"  best weights {best['best']} (default {best['default']})")
    lines.append(f"  TensorBoard: tensorboard --logdir {out.root.resolve()}")
    print("\n".join(lines), flush=True)
