"""``raydino bench ...``: the benchmarks' subcommands, each a call into its module (imported when it runs)."""

from __future__ import annotations

import argparse

OUT_HELP = "also write the results as JSON to this file, or to a new file per run in this folder (docs/benchmarks/)"


def int_list(text: str) -> list[int]:
    """A comma-separated list of integers (sizes, batch sizes, row counts) as a command-line type."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 56,112,224, got {text!r}") from None


def cmd_bench_pyramids(args: argparse.Namespace) -> None:
    from raydino.bench.pyramids import run_bench

    run_bench(arch=args.arch, dino=args.dino, count=args.count, naive_count=args.naive_count,
              batch_size=args.batch_size, sizes=args.sizes, image_size=args.image_size, device=args.device,
              actors=args.actors, phases=args.phases.split(",") if args.phases else None, out=args.out)


def cmd_bench_train(args: argparse.Namespace) -> None:
    from raydino.bench.train import run_bench

    run_bench(arch=args.arch, resolution=args.resolution, batch_size=args.batch_size, steps=args.steps,
              rows=args.rows, epochs=args.epochs, device=args.device, phases=args.phases.split(","), out=args.out,
              compile_mode=args.compile, channels_last=args.channels_last, materialize=not args.stream)


def cmd_bench_loss(args: argparse.Namespace) -> None:
    from raydino.bench.loss import run_bench

    run_bench(args.root, steps=args.steps, grid=args.grid, out=args.out)


def cmd_bench_sensitivity(args: argparse.Namespace) -> None:
    from raydino.bench.sensitivity import run_bench

    run_bench(args.dino, sizes=args.sizes, count=args.faces, resolution=args.resolution, out=args.out)


def cmd_bench_serve(args: argparse.Namespace) -> None:
    from raydino.bench.serve import run_bench
    from raydino.errors import require_run

    run_bench(require_run(args.run, prior=True), clients=args.clients, requests=args.requests, prompt=args.prompt,
              port=args.port, overrides=args.overrides, out=args.out, steps=args.steps)


def cmd_bench_sample(args: argparse.Namespace) -> None:
    from raydino.bench.sample import run_bench

    run_bench(preset=args.preset, batches=tuple(args.batches), dit_steps=args.dit_steps,
              dit_batches=tuple(args.dit_batches) if args.dit_batches else None, compile=args.compile,
              device=args.device, skip_dit=args.skip_dit, out=args.out)


def cmd_bench_prior(args: argparse.Namespace) -> None:
    from raydino.bench.prior import run_bench

    run_bench(phases=args.phases.split(","), rows=args.rows, preset=args.preset, batch_size=args.batch_size,
              repeats=args.repeats, device=args.device, out=args.out)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bench.add_parser("pyramids", help="Ray Data pyramid extraction vs a naive loop and a model-only ceiling")
    p.add_argument("--arch", choices=["tiny", "vits14", "vitb14"], default="vits14",
                   help="random-weight DINOv2 architecture, saved and loaded through the normal loader")
    p.add_argument("--dino", default=None, help="an existing DINOv2 model instead of --arch")
    p.add_argument("--count", type=int, default=256, help="synthetic faces through the pipeline and the ceiling")
    p.add_argument("--naive-count", type=int, default=None, help="images through the naive loop (default: --count)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sizes", type=int_list, default=[56, 112, 224])
    p.add_argument("--image-size", type=int, default=256, help="side of the synthetic faces")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--actors", type=int, default=None,
                   help="encoder actors (default: 1 per GPU, or one per core on a CPU-only machine)")
    p.add_argument("--phases", default=None, help="comma-separated subset of ceiling,naive,decode,encoder,write,ray (default: all)")
    p.add_argument("--out", default=None, help=OUT_HELP)
    p.set_defaults(func=cmd_bench_pyramids)
    p = bench.add_parser("sample", help="prior (K steps) + one generator pass vs DiT-XL/2 (250 steps, CFG); "
                                        "DiT needs the bench extra")
    p.add_argument("--preset", default="ffhq256", help="whose prior and generator to time")
    p.add_argument("--batches", type=int_list, default=[1, 64], help="batch sizes of the whole path")
    p.add_argument("--dit-steps", type=int, default=250)
    p.add_argument("--dit-batches", type=int_list, default=None, help="DiT batch sizes (default: --batches)")
    p.add_argument("--skip-dit", action="store_true", help="time raydino's path only (no diffusers needed)")
    p.add_argument("--compile", action="store_true", help="torch.compile the generator")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    p.set_defaults(func=cmd_bench_sample)

    p = bench.add_parser("prior", help="the prior's training memory at 1k and 10k rows, and its step time")
    p.add_argument("--phases", default="memory,step", help="memory (Ray, synthetic codes), step (no Ray)")
    p.add_argument("--rows", type=int_list, default=[1000, 10000], help="memory phase: rows of synthetic codes")
    p.add_argument("--preset", default="ffhq256", help="step phase: whose prior size to time")
    p.add_argument("--batch-size", type=int, default=256, help="step phase: codes per step")
    p.add_argument("--repeats", type=int, default=3, help="step phase: timed steps (after one warm-up step)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", default=None, help=OUT_HELP)
    p.set_defaults(func=cmd_bench_prior)

    p = bench.add_parser("train", help="training images/s: Ray Data input vs in-device batches, FLOPs, MFU")
    p.add_argument("--arch", choices=["tiny", "vits14", "vitb14"], default="tiny",
                   help="random-weight DINOv2 architecture (vitb14: the ffhq256 model's size)")
    p.add_argument("--resolution", type=int_list, default=[16, 32], help="stages to time (comma-separated)")
    p.add_argument("--batch-size", type=int_list, default=[16],
                   help="global batch size; the device phase times each of a comma-separated list")
    p.add_argument("--steps", type=int, default=20, help="device phase: timed steps per stage (after 3 warm-up steps)")
    p.add_argument("--rows", type=int, default=256, help="ray phase: synthetic faces in the pyramid it reads")
    p.add_argument("--epochs", type=int, default=2, help="ray phase: timed epochs per stage (after one warm-up epoch)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--phases", default="device,ray", help="device (no Ray needed), ray (2 gloo workers on CPU)")
    p.add_argument("--compile", choices=["none", "generator", "all"], default="none",
                   help="device phase: torch.compile the generator, or it and the DINOv2 loss encoder")
    p.add_argument("--channels-last", action="store_true", help="device phase: the generator in channels-last layout")
    p.add_argument("--stream", action="store_true", help="ray phase: stream the parquet (train.materialize=false)")
    p.add_argument("--out", default=None, help=OUT_HELP)
    p.set_defaults(func=cmd_bench_train)

    p = bench.add_parser("loss", help="distributional vs regression loss: detail figures, s/step, noise grids")
    p.add_argument("--root", default="data/demo", help="a finished `raydino run` output with a baseline run")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per loss (after 3 warm-up steps)")
    p.add_argument("--grid", default=None, help="write both runs' noise grids, one above the other, to this PNG")
    p.add_argument("--out", default=None, help=OUT_HELP)
    p.set_defaults(func=cmd_bench_loss)

    p = bench.add_parser("sensitivity", help="can the DINOv2 loss see eyes: distance of painted-over, blurred, "
                                             "upsampled and mean faces against the real face's")
    p.add_argument("--dino", default=None, help="DINOv2 directory or hub id (default: the shipped demo encoder)")
    p.add_argument("--sizes", type=int_list, default=None, help="pyramid levels (default: 112,84,56)")
    p.add_argument("--faces", type=int, default=48)
    p.add_argument("--resolution", type=int, default=32, help="the generator's resolution")
    p.add_argument("--out", default=None, help=OUT_HELP)
    p.set_defaults(func=cmd_bench_sensitivity)

    p = bench.add_parser("serve", help="raydino serve under load on 127.0.0.1: p50/p99 latency, images/s and the "
                                       "batched share at 1, 8, 32 and 64 clients")
    p.add_argument("--run", default="data/demo/runs/train", help="a finished run with its prior (default: the demo's)")
    p.add_argument("--clients", type=int_list, default=[1, 8, 32, 64], help="concurrency levels; the first is the baseline")
    p.add_argument("--requests", type=int, default=256, help="one-image requests per level (at least 4 per client)")
    p.add_argument("--prompt", default="a person with red hair", help="every request's prompt ('' for none)")
    p.add_argument("--steps", type=int, default=None, help="the prior's ODE steps per request (default: the run's)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--out", default=None, help=OUT_HELP)
    p.add_argument("overrides", nargs="*", help="serve.key=value overrides (e.g. serve.max_batch_size=64)")
    p.set_defaults(func=cmd_bench_serve)
