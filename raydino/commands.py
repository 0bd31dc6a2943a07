"""What each ``raydino`` subcommand does with its parsed arguments: checks, then one package function.

The parser and ``main`` are in :mod:`raydino.cli`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path

from raydino.config import load_config
from raydino.config.checks import check_extraction
from raydino.data_fit import fit_to_rows
from raydino.errors import UserError, require_images, require_port, require_pyramid, require_run, require_writable
from raydino.lock import hold


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so the same unwinding runs."""


def _cfg(args: argparse.Namespace):
    return load_config(args.preset, args.config, args.overrides)


def cmd_synth_faces(args: argparse.Namespace) -> None:
    from raydino.data.synth_faces import METADATA, write_faces

    out = write_faces(args.out, args.count, seed=args.seed, size=args.size)
    print(f"wrote {args.count} synthetic faces and {METADATA} to {out}")


def cmd_tiny_models(args: argparse.Namespace) -> None:
    from raydino.models.shipping import SHIPPED, ship
    from raydino.models.tiny import folders, write_tiny_models

    cfg = _cfg(args)
    if args.ship:
        if not (args.out or cfg.preset):
            raise UserError("raydino tiny-models --ship: give --preset (its build goes to raydino/models/shipped/PRESET) "
                            "or --out")
        # relative to where it runs: the models' notes name their faces' folder by this path
        out = Path(args.out or os.path.relpath(SHIPPED / cfg.preset))
        if out.exists():
            shutil.rmtree(out)
        paths = ship(cfg, out)
    elif not (args.out and args.faces):
        raise UserError("raydino tiny-models: --out and --faces are required (or --ship)")
    else:
        paths = write_tiny_models(args.out, args.faces, seed=args.seed, budget=cfg.tiny, sizes=cfg.pyramids.sizes,
                                  names=folders(cfg))
    for name, path in paths.items():
        print(f"{name}: {path}")


def cmd_run(args: argparse.Namespace) -> None:
    from raydino.pipeline import run

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.images:
        overrides.append(f"data.images={args.images}")
    run(load_config(args.preset, args.config, overrides), address=args.address, ray_progress=args.ray_progress)


def cmd_pyramids(args: argparse.Namespace) -> None:

    from raydino.data.sources import Split, list_images
    from raydino.models.loading import ModelNotFoundError, load_clip, require_local
    from raydino.pyramids.extract import build_pyramids
    from raydino.pyramids.publish import finished_output
    from raydino.ray_init import init_ray

    run_cfg = _cfg(args)
    flags = {"dino": args.dino, "clip": args.clip, "sizes": args.sizes, "batch_size": args.batch_size,
             "actors": args.actors, "max_failure_fraction": args.max_failure_fraction}
    cfg = dataclasses.replace(run_cfg.pyramids, **{k: v for k, v in flags.items() if v is not None})
    if args.dino and args.clip is None and cfg.clip:  # the preset's CLIP only if it is there
        try:
            load_clip(cfg.clip)
        except ModelNotFoundError:
            logging.getLogger("raydino").info("no CLIP column: the preset's CLIP %s is not there (--clip names one)",
                                              cfg.clip)
            cfg = dataclasses.replace(cfg, clip="")
    split = Split(args.split, run_cfg.data.holdout_fraction, run_cfg.eval.n) if args.split else None
    check_extraction(cfg, {name: "--" + name.replace("_", "-") for name, value in flags.items() if value is not None})
    require_local(cfg.dino, "--dino" if args.dino else "pyramids.dino")
    require_writable(args.out)
    require_images(args.images, min_side=cfg.min_side, max_pixels=cfg.max_pixels)
    out = Path(args.out).expanduser().absolute()
    finished_output(cfg, out, args.images, args.overwrite, split.apply(list_images(args.images)) if split else None)
    with hold(args.out, "raydino pyramids"):
        init_ray(args.address, data_progress=args.ray_progress)
        build_pyramids(cfg, args.images, args.out, overwrite=args.overwrite, split=split)


def cmd_train_prior(args: argparse.Namespace) -> None:
    from raydino.layout import Run
    from raydino.models.loading import bind_encoders
    from raydino.ray_init import init_ray
    from raydino.train.preflight import resume_config, run_exists
    from raydino.train.prior_trainer import train_prior
    from raydino.train.trainer import TrainingError

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite: choose one (continue the prior in --run, or train it again)")
    require_run(args.run)
    require_writable(args.run, "--run")
    manifest = require_pyramid(args.pyramids)
    cfg = resume_config(args.run, args.overrides)  # the run's config: its encoders, its prior.* settings
    run = Run(args.run)
    if not args.overwrite:
        run_exists(run, "prior", args.resume, flag="--run")
    # checks only, before Ray starts: an encoder or size the pyramid cannot serve is one sentence here
    bind_encoders(cfg.pyramids, manifest, args.pyramids)
    fit_to_rows(cfg, manifest["rows"], where=f"--pyramids {args.pyramids}", quiet=True)
    with hold(args.run, "raydino train-prior", "--run"):
        if args.overwrite:
            run.clear("prior")
        init_ray(args.address)
        try:
            figures = train_prior(cfg, args.pyramids, args.run, resume=args.resume)
        except TrainingError as exc:  # a failure on the workers, not in what was asked: exit 1
            sys.exit(f"raydino train-prior: error: {exc}")
    print(f"flow prior: {run.prior} ({figures['step']} steps, loss {figures.get('loss', float('nan')):.4f}); "
          f"PCA baseline: {run.prior_pca}; TensorBoard: tensorboard --logdir {run.tb_prior}")


def cmd_distill_prior(args: argparse.Namespace) -> None:
    from raydino.layout import Run
    from raydino.ray_init import init_ray
    from raydino.train.distill import distill_prior
    from raydino.train.preflight import resume_config, run_exists
    from raydino.train.trainer import TrainingError

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite: choose one (continue the student in --run, or distil it again)")
    require_run(args.run, prior=True)
    require_writable(args.run, "--run")
    require_pyramid(args.pyramids)
    cfg = resume_config(args.run, args.overrides)  # the run's config: its prior, its distill.* settings
    if cfg.distill.steps < 1:
        raise UserError(f"distill.steps={cfg.distill.steps}: give the student some steps (e.g. distill.steps=600)")
    run = Run(args.run)
    if not args.overwrite:
        run_exists(run, "student", args.resume, flag="--run")
    with hold(args.run, "raydino distill-prior", "--run"):
        if args.overwrite:
            run.clear("student")
        init_ray(args.address)
        try:
            figures = distill_prior(cfg, args.pyramids, args.run, resume=args.resume)
        except TrainingError as exc:  # a failure on the workers, not in what was asked: exit 1
            sys.exit(f"raydino distill-prior: error: {exc}")
    print(f"student prior: {run.student} ({figures['step']} steps on {figures['pairs']} teacher pairs, loss "
          f"{figures.get('loss', float('nan')):.4f}); sampling, serving and eval now use it (--teacher: the "
          f"prior); TensorBoard: tensorboard --logdir {run.tb_student}")


def cmd_sample(args: argparse.Namespace) -> None:
    from raydino.sampling import sample

    require_run(args.run)
    rows = sample(args.run, args.out, from_image=args.from_image, vary=args.vary, prompts=args.prompt,
                  cfg_scale=args.cfg, prior=args.prior, mix=args.mix, region=args.region, steps=args.steps, n=args.n,
                  seed=args.seed, save_each_dir=args.save_each, teacher=args.teacher)
    print(f"wrote {sum(len(r.images) for r in rows)} images in {len(rows)} rows to {args.out}")


def cmd_serve(args: argparse.Namespace) -> None:
    """Checks the run and the overrides before Ray starts; Ctrl-C is how it stops, so it ends with 0."""
    from raydino.layout import Run
    from raydino.serve import serve_run

    run = require_run(args.run, prior=True)
    others = [o for o in args.overrides if not o.startswith("serve.")]
    if others:
        raise UserError(f"raydino serve takes serve.* overrides only (the run's own config stands), got {others}")
    cfg = load_config(config_file=str(Run(run).config), overrides=args.overrides)
    if not args.address:  # on a cluster the proxies listen on its nodes, not here
        require_port(args.host, args.port)
    try:
        serve_run(run, cfg, args.port, host=args.host, address=args.address)
    except (KeyboardInterrupt, Terminated):
        print("raydino serve: stopped", file=sys.stderr)


def cmd_tune(args: argparse.Namespace) -> None:
    from raydino.ray_init import init_ray
    from raydino.sweep.tune import check_sweep, tune_sweep
    from raydino.train.preflight import bind_pyramid

    overrides = list(args.overrides) + ([f"tune.trials={args.trials}"] if args.trials else [])
    cfg = load_config(args.preset, args.config, overrides)
    require_writable(args.out)
    manifest = require_pyramid(args.pyramids)
    if args.holdout:
        require_pyramid(args.holdout, "--holdout")
    check_sweep(cfg, args.holdout)
    bind_pyramid(cfg, args.pyramids)
    fit_to_rows(cfg, manifest["rows"], where=f"--pyramids {args.pyramids}", quiet=True)
    with hold(args.out, "raydino tune"):
        init_ray(args.address)
        tune_sweep(cfg, args.pyramids, args.out, holdout=args.holdout)


def cmd_train(args: argparse.Namespace) -> None:
    from raydino.layout import Run
    from raydino.ray_init import init_ray
    from raydino.train.preflight import bind_pyramid, resume_config, run_exists
    from raydino.train.trainer import TrainingError, train

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite: choose one (continue the run in --out, or start it again)")
    require_writable(args.out)
    cfg = resume_config(args.out, args.overrides) if args.resume else _cfg(args)
    manifest = require_pyramid(args.pyramids)
    if args.holdout:
        require_pyramid(args.holdout, "--holdout")
    run = Run(args.out)
    if not args.overwrite:
        run_exists(run, "generator", args.resume)
    bind_pyramid(cfg, args.pyramids)  # its encoders: a mismatch is refused here, not on a worker
    fit_to_rows(cfg, manifest["rows"], where=f"--pyramids {args.pyramids}", quiet=True)
    with hold(args.out, "raydino train"):
        if args.overwrite:
            run.clear("generator")
        init_ray(args.address)
        try:
            metrics = train(cfg, args.pyramids, args.out, resume=args.resume, holdout=args.holdout)
        except TrainingError as exc:  # a failure on the workers, not in what was asked: exit 1
            sys.exit(f"raydino train: error: {exc}")
    print(f"training rows, training encoder: val/dist_unweighted {metrics['val/dist_unweighted']:.4f} "
          f"(step 0: {metrics['step0/dist_unweighted']:.4f}, mean image: {metrics['mean_image/dist_unweighted']:.4f})")
    if "heldout/eval_dist" in metrics:
        print(f"held-out ({metrics['heldout_set']}), evaluation encoder: heldout/eval_dist "
              f"{metrics['heldout/eval_dist']:.4f}")
    print(f"generator: {run.generator}, TensorBoard: tensorboard --logdir {run.tb}, grids: {run.grids}")


def cmd_eval(args: argparse.Namespace) -> None:
    from raydino.evaluation.evaluate import evaluate
    from raydino.layout import Run

    require_run(args.run)
    require_pyramid(args.pyramids)
    prompts = args.prompt if args.prompt is not None else Run(args.run).config_of().sample.prompts
    figures = evaluate(args.run, args.pyramids, n=args.n, seed=args.seed, prompts=prompts)
    for key, value in figures.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {Run(args.run).eval}")


def cmd_report(args: argparse.Namespace) -> None:
    from raydino.report import write_report

    require_run(args.run, finished=False)
    page = write_report(args.run, sweep=args.sweep, pyramids=args.pyramids, samples=args.samples, out=args.out)
    print(f"wrote {page}; open file://{page.resolve()}")
