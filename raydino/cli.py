"""``raydino`` command line: subcommands map to package functions, nothing else."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys

from raydino.bench.commands import add_bench_parser, int_list
from raydino.commands import (
    Terminated,
    cmd_distill_prior,
    cmd_eval,
    cmd_pyramids,
    cmd_report,
    cmd_run,
    cmd_sample,
    cmd_serve,
    cmd_synth_faces,
    cmd_tiny_models,
    cmd_train,
    cmd_train_prior,
    cmd_tune,
)
from raydino.config import ConfigError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", help="preset shipped in raydino/configs (demo, ffhq256)")
    p.add_argument("--config", default=None, help="a YAML config file instead of a preset")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")


RAY_PROGRESS_HELP = ("also show Ray Data's own per-operator progress bars (default: one done/total, rate and "
                     "time-left line per long step)")


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

    p = sub.add_parser("distill-prior",
                       help="distil a run's flow prior into a few-step student, guidance included (Ray Data + Ray Train)")
    p.add_argument("--run", required=True, help="a run directory with its flow prior (prior.safetensors)")
    p.add_argument("--pyramids", required=True, help="the pyramid the prior was trained on (its conditions)")
    p.add_argument("--resume", action="store_true", help="continue the student run in --run")
    p.add_argument("--overwrite", action="store_true", help="distil again from scratch, removing the old student")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("overrides", nargs="*", help="distill.key=value overrides (e.g. distill.steps=600)")
    p.set_defaults(func=cmd_distill_prior)

    p = sub.add_parser("sample", help="images from a real image, the prior, text prompts or a mix (no Ray)")
    p.add_argument("--run", required=True, help="a finished training run directory")
    p.add_argument("--out", required=True, help="the labelled PNG grid to write")
    p.add_argument("--from-image", default=None, metavar="PATH", help="reconstruction and variations of an image")
    p.add_argument("--vary", type=float, default=None, metavar="T",
                   help="with --from-image: vary the code along the prior's flow, T in [0, 1] (0: the reconstruction); "
                        "with --prompt too: edit the face toward each prompt (this face, but smiling)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a text prompt (repeatable); with --from-image and --vary, the edits' prompt")
    p.add_argument("--cfg", type=float, default=None, metavar="S",
                   help="classifier-free guidance scale of --prompt samples (default: prior.guidance)")
    p.add_argument("--prior", nargs="?", const="flow", default=None, choices=["flow", "pca"],
                   help="unconditional samples from the flow prior, or from the PCA Gaussian baseline (--prior pca)")
    p.add_argument("--steps", type=int, default=None, metavar="K",
                   help="the prior's ODE steps (default: the student's distill.sample_steps, else prior.sample_steps)")
    p.add_argument("--teacher", action="store_true",
                   help="sample the flow prior itself (K guided Heun steps) where the run has a distilled student")
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


def _terminate(signum, frame) -> None:
    raise Terminated


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """Where a stopped command picks up again, as the command to type."""
    again = shlex.join(["raydino", *argv])
    if args.command in ("train", "train-prior", "fit-codes", "distill-prior"):
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
