"""``raydino`` command line: subcommands map to package functions, nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

from raydino.bench.commands import add_bench_parser, int_list
from raydino.config import ConfigError, load_config
from raydino.config.checks import check_extraction
from raydino.data_fit import fit_to_rows
from raydino.errors import UserError, require_images, require_pyramid, require_run, require_writable
from raydino.lock import hold


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", help="preset shipped in raydino/configs (demo, ffhq256)")
    p.add_argument("--config", default=None, help="a YAML config file instead of a preset")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")


def _cfg(args: argparse.Namespace):
    return load_config(args.preset, args.config, args.overrides)


def cmd_synth_faces(args: argparse.Namespace) -> None:
    from raydino.data.synth_faces import METADATA, write_faces

    out = write_faces(args.out, args.count, seed=args.seed, size=args.size)
    print(f"wrote {args.count} synthetic faces and {METADATA} to {out}")


def cmd_tiny_models(args: argparse.Namespace) -> None:
    from raydino.models.shipping import SHIPPED, ship
    from raydino.models.tiny import write_tiny_models

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
        paths = write_tiny_models(args.out, args.faces, seed=args.seed, budget=cfg.tiny, sizes=cfg.pyramids.sizes)
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
    import dataclasses

    from raydino.data.images import Split, list_images
    from raydino.models.loading import ModelNotFoundError, load_clip, require_local
    from raydino.pipeline import init_ray
    from raydino.pyramids.extract import build_pyramids
    from raydino.pyramids.publish import finished_output

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
            cfg.clip = ""
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


RAY_PROGRESS_HELP = ("also show Ray Data's own per-operator progress bars (default: one done/total, rate and "
                     "time-left line per long step)")


def cmd_train_prior(args: argparse.Namespace) -> None:
    from raydino.layout import Run
    from raydino.models.loading import bind_encoders
    from raydino.pipeline import init_ray
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


def cmd_sample(args: argparse.Namespace) -> None:
    from raydino.sampling import sample

    require_run(args.run)
    rows = sample(args.run, args.out, from_image=args.from_image, vary=args.vary, prompts=args.prompt,
                  cfg_scale=args.cfg, prior=args.prior, mix=args.mix, region=args.region, steps=args.steps, n=args.n,
                  seed=args.seed, save_each_dir=args.save_each)
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
    try:
        serve_run(run, cfg, args.port, host=args.host, address=args.address)
    except (KeyboardInterrupt, Terminated):
        print("raydino serve: stopped", file=sys.stderr)


def cmd_tune(args: argparse.Namespace) -> None:
    from raydino.pipeline import init_ray
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
    from raydino.pipeline import init_ray
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydino", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth-faces", help="write procedural faces with attribute captions")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.set_defaults(func=cmd_synth_faces)

    p = sub.add_parser("tiny-models", help="train tiny DINOv2/CLIP encoders, an attribute classifier and a part "
                                          "segmenter on synthetic faces")
    _config_args(p)
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faces", "--train-clip-on", dest="faces", default=None,
                   help="a `raydino synth-faces` folder: the encoders, the classifier and the CLIP learn from it")
    p.add_argument("--ship", action="store_true",
                   help="build the preset's own recipe (its synthetic faces, seed, levels, budget) into "
                        "raydino/models/shipped/PRESET (or --out): the build `raydino run` copies instead of training")
    p.set_defaults(func=cmd_tiny_models)

    p = sub.add_parser("run", help="the main job: every stage of the pipeline, resumable")
    _config_args(p)
    p.add_argument("--images", default=None, help="image folder/URI (default: synthetic faces in the demo)")
    p.add_argument("--out", default=None, help="output root (default: the preset's `out`)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("--ray-progress", action="store_true", help=RAY_PROGRESS_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("pyramids", help="DINOv2 feature pyramids of an image folder/glob/URI, through Ray Data")
    _config_args(p)
    p.add_argument("--images", required=True, help="local folder (recursive), glob, or file:// s3:// gs:// URI")
    p.add_argument("--out", required=True, help="output folder (written to a temporary folder, then renamed)")
    p.add_argument("--dino", default=None, help="DINOv2 hub id or local directory (default: the preset's)")
    p.add_argument("--split", choices=["train", "holdout"], default=None,
                   help="one side of the deterministic held-out split (by hash of the relative path; "
                        "data.holdout_fraction, at least eval.n files, at most a third); default: every image")
    p.add_argument("--sizes", type=int_list, default=None, help="level input sizes, multiples of 14 (e.g. 56,112,224)")
    p.add_argument("--clip", default=None,
                   help="open_clip model for image embeddings (NAME:TAG, hf-hub:..., DIR); default: the preset's, "
                        "except that with --dino and no --clip the CLIP column is computed only if the preset's "
                        "CLIP is there")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--actors", type=int, default=None, help="encoder actors (one GPU each when pyramids.num_gpus=1)")
    p.add_argument("--overwrite", action="store_true", help="recompute a finished output")
    p.add_argument("--max-failure-fraction", type=float, default=None,
                   help="fail when more than this fraction of the image files cannot be used")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("--ray-progress", action="store_true", help=RAY_PROGRESS_HELP)
    p.set_defaults(func=cmd_pyramids)

    add_bench_parser(sub)

    p = sub.add_parser("train-prior", aliases=["fit-codes"],
                       help="train a run's flow-matching prior over coarse codes (Ray Train) and its PCA baseline")
    p.add_argument("--run", required=True, help="a finished training run directory (its config.yaml holds prior.*)")
    p.add_argument("--pyramids", required=True, help="the pyramid the run was trained on")
    p.add_argument("--resume", action="store_true", help="continue the prior run in --run")
    p.add_argument("--overwrite", action="store_true", help="train the prior again from scratch, removing the old one")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("overrides", nargs="*", help="prior.key=value overrides (e.g. prior.steps=2000)")
    p.set_defaults(func=cmd_train_prior)

    p = sub.add_parser("sample", help="images from a real image, the prior, text prompts or a mix (no Ray)")
    p.add_argument("--run", required=True, help="a finished training run directory")
    p.add_argument("--out", required=True, help="the labelled PNG grid to write")
    p.add_argument("--from-image", default=None, metavar="PATH", help="reconstruction and variations of an image")
    p.add_argument("--vary", type=float, default=None, metavar="T",
                   help="with --from-image: vary the code along the prior's flow, T in [0, 1] (0: the reconstruction)")
    p.add_argument("--prompt", action="append", default=None, help="a text prompt (repeatable)")
    p.add_argument("--cfg", type=float, default=None, metavar="S",
                   help="classifier-free guidance scale of --prompt samples (default: prior.guidance)")
    p.add_argument("--prior", nargs="?", const="flow", default=None, choices=["flow", "pca"],
                   help="unconditional samples from the flow prior, or from the PCA Gaussian baseline (--prior pca)")
    p.add_argument("--steps", type=int, default=None, metavar="K",
                   help="the prior's ODE steps (default: prior.sample_steps)")
    p.add_argument("--mix", nargs=2, default=None, metavar=("A", "B"), help="two images whose coarse codes to mix")
    p.add_argument("--region", default="top", choices=["top", "bottom", "left", "right"])
    p.add_argument("--n", type=int, default=8, help="images per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-each", action="store_true", help="also write every image to a folder next to --out")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("serve", help="a run as a live text-to-face endpoint on Ray Serve: API, web page, batching")
    p.add_argument("--run", required=True, help="a finished training run directory with its flow prior")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("overrides", nargs="*", help="serve.key=value overrides (e.g. serve.max_batch_size=64)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("tune", help="Ray Tune sweep of the per-scale loss weights (ASHA), resumable")
    _config_args(p)
    p.add_argument("--pyramids", required=True)
    p.add_argument("--out", required=True, help="sweep directory (rerun with the same one to resume)")
    p.add_argument("--trials", type=int, default=None, help="number of trials (default: tune.trials)")
    p.add_argument("--holdout", default=None, help="held-out pyramids the trials are ranked on (tune.metric heldout/*)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("train", help="train the progressive generator on a pyramid with Ray Train (resumable)")
    _config_args(p)
    p.add_argument("--pyramids", required=True, help="a `raydino pyramids` output folder")
    p.add_argument("--out", required=True, help="run directory: generator, config, checkpoints, tb, grids")
    p.add_argument("--holdout", default=None,
                   help="held-out pyramids: heldout/* figures at each stage end (evaluation encoder)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (its config.yaml + overrides)")
    p.add_argument("--overwrite", action="store_true",
                   help="remove the run in --out (checkpoints, prior, figures) and train again from scratch")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="weight-independent figures of a run: distances, FD-DINOv2, CLIP score")
    p.add_argument("--run", required=True)
    p.add_argument("--pyramids", required=True, help="held-out pyramids (not the training rows)")
    p.add_argument("--n", type=int, default=None, help="held-out images to use (default: the run's eval.n)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", action="append", default=None, help="prompts to score (default: sample.prompts)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="one static HTML page of a run: grids, samples, curves, trials, the pyramid")
    p.add_argument("--run", required=True, help="a training run directory (OUT/runs/train in `raydino run`'s layout)")
    p.add_argument("--sweep", default=None, help="a `raydino tune` folder (default: OUT/sweep)")
    p.add_argument("--pyramids", default=None, help="pyramid to picture (default: OUT/pyramids-val, OUT/pyramids)")
    p.add_argument("--samples", default=None, help="folder of `raydino sample` grids (default: OUT/samples)")
    p.add_argument("--out", default=None, help="the page to write (default: OUT/report/index.html)")
    p.set_defaults(func=cmd_report)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so the same unwinding runs."""


def _terminate(signum, frame) -> None:
    raise Terminated


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """Where a stopped command picks up again, as the command to type."""
    again = shlex.join(["raydino", *argv])
    if args.command in ("train", "train-prior", "fit-codes"):
        return f"resume from the last checkpoint with: {again}" + ("" if args.resume else " --resume")
    if args.command in ("run", "tune"):
        return f"resume with the same command (finished {'steps' if args.command == 'run' else 'trials'} are kept): {again}"
    if args.command == "pyramids":
        return f"nothing was published; run it again: {again}"
    return f"nothing to resume; run it again: {again}"


def main(argv: list[str] | None = None) -> int:
    # raydino's own progress at INFO; libraries (open_clip logs every config lookup) only from WARNING
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("raydino").setLevel(logging.INFO)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"raydino {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raydino {args.command}: interrupted (Ctrl-C); {resume_hint(args, argv)}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"raydino {args.command}: terminated (SIGTERM); {resume_hint(args, argv)}", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
