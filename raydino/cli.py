"""``raydino`` command line: subcommands map to package functions, nothing else."""

from __future__ import annotations

import argparse
import logging
import sys

from raydino.config import ConfigError, load_config


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", help="preset shipped in raydino/configs (demo, ffhq256)")
    p.add_argument("--config", default=None, help="a YAML config file instead of a preset")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")


def _cfg(args: argparse.Namespace):
    return load_config(args.preset, args.config, args.overrides)


def cmd_synth_faces(args: argparse.Namespace) -> None:
    from raydino.data.synth_faces import write_faces

    out = write_faces(args.out, args.count, seed=args.seed, size=args.size)
    print(f"wrote {args.count} synthetic faces and metadata.parquet to {out}")


def cmd_tiny_models(args: argparse.Namespace) -> None:
    from raydino.models.tiny import write_tiny_models

    paths = write_tiny_models(args.out, seed=args.seed, train_clip_on=args.train_clip_on)
    for name, path in paths.items():
        print(f"{name}: {path}")


def cmd_run(args: argparse.Namespace) -> None:
    from raydino.pipeline import run

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.images:
        overrides.append(f"data.images={args.images}")
    run(load_config(args.preset, args.config, overrides), address=args.address)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydino", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth-faces", help="write procedural faces with attribute captions")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.set_defaults(func=cmd_synth_faces)

    p = sub.add_parser("tiny-models", help="write tiny random DINOv2/CLIP models for offline runs")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-clip-on", default=None, help="synthetic-face folder to fit the tiny CLIP to its captions")
    p.set_defaults(func=cmd_tiny_models)

    p = sub.add_parser("run", help="the main job: every stage of the pipeline, resumable")
    _config_args(p)
    p.add_argument("--images", default=None, help="image folder/URI (default: synthetic faces in the demo)")
    p.add_argument("--out", default=None, help="output root (default: the preset's `out`)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"raydino {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
