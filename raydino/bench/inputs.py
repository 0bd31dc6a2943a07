"""What naming a corrupt pyramid costs: the footer check before Ray, the non-finite count in every step.

``raydino train`` reads each shard's parquet footer before Ray starts
(:func:`raydino.errors.require_pyramid`), and every training step checks
that its rows are finite on every rank (:func:`raydino.train.runtime.inputs_finite`).
This times both on a pyramid against what they guard: the footer check
against reading the pyramid's training columns once, the finite check
against the training step it precedes (the demo's 32 px stage, batch 8 per
worker, the pyramid's DINOv2), one thread.

    python -m raydino.bench.inputs --pyramids OUT/pyramids [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from raydino.bench.measure import seconds_per_call
from raydino.bench.record import machine
from raydino.config import load_config
from raydino.errors import require_pyramid
from raydino.losses import DinoPyramidLoss
from raydino.models.loading import load_dino
from raydino.pyramids import schema
from raydino.pyramids.batch import Targets, columns
from raydino.train.loop import build_models
from raydino.train.runtime import inputs_finite
from raydino.train.step import train_step


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pyramids", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    manifest = schema.read_manifest(args.pyramids)
    cfg = load_config("demo", overrides=[f"pyramids.dino={manifest['dino']['source']}",
                                         f"pyramids.sizes={manifest['levels']}"])
    sizes = cfg.pyramids.sizes

    footer = seconds_per_call(lambda: require_pyramid(args.pyramids), 5, "cpu", warmup=1)
    read = seconds_per_call(lambda: schema.load_arrays(args.pyramids, columns(sizes)), 1, "cpu", warmup=1)

    dino = load_dino(cfg.pyramids.dino)
    model, _, opt = build_models(cfg, dino, torch.device("cpu"))
    loss_fn = DinoPyramidLoss(dino, sizes, cfg.loss)
    rows = schema.read_first_rows(args.pyramids, columns(sizes), args.batch)
    targets = Targets.from_batch(rows, sizes)
    rng = torch.Generator().manual_seed(0)
    resolution = cfg.train.stages[-1].resolution

    def step() -> None:
        noise = model.draw_noise(args.batch, resolution, rng, torch.device("cpu"))
        train_step(model, opt, loss_fn, targets, noise, resolution, 1.0, grad_clip=1.0, bf16=False, rng=rng)

    step_s = seconds_per_call(step, args.steps, "cpu", warmup=2)
    check_s = seconds_per_call(lambda: inputs_finite([*targets.tokens, *targets.cls]), 200, "cpu", warmup=5)
    figures = {"pyramid": args.pyramids, "rows": manifest["rows"], "shards": len(schema.shard_files(args.pyramids)),
               "footer_check_s": footer, "read_once_s": read, "footer_vs_read": footer / read,
               "step_s": step_s, "finite_check_s": check_s, "check_vs_step": check_s / step_s,
               "batch": args.batch, "resolution": resolution, "machine": machine(),
               "date": time.strftime("%Y-%m-%d")}
    print(f"footer check {footer * 1e3:.1f} ms for {figures['shards']} shards, against reading the pyramid's "
          f"training columns once {read * 1e3:.1f} ms: ratio {figures['footer_vs_read']:.3f}")
    print(f"finite check {check_s * 1e6:.0f} us per step, against the {resolution} px training step "
          f"{step_s * 1e3:.1f} ms (batch {args.batch}): ratio {figures['check_vs_step']:.5f}")
    print(json.dumps(figures["machine"]))
    return figures


if __name__ == "__main__":
    main()
