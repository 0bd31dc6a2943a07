"""Does the loss need a guard against adversarial feature matches? A measurement.

Trains the same small generator with the guard switched on and off (random
shifts ``loss.shift_px``, colour term ``loss.color_weight``) on one pyramid,
in one process (no Ray), and scores each result three ways:

- ``train_dist``: unweighted patch distance under the training DINOv2 (what
  the loss optimises; a cheat scores well here);
- ``heldout_dist``: the same distance under a second DINOv2 (other weights)
  between the generated image and the real image: a match made of
  network-specific patterns does not transfer;
- ``hf_ratio``: energy above the colour term's band (image minus its
  ``color_size`` px version) relative to the real images': > 1 means more
  high-frequency content than real faces have.

    python -m raydino.bench.guard --pyramids DIR --heldout-dino DIR [--resolution 64] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raydino.config import Config, load_config
from raydino.data.images import read_image
from raydino.evaluation.metrics import level_distances
from raydino.layout import Checkpoint
from raydino.models.encoders import dino_levels, resize, to_float
from raydino.models.loading import load_dino
from raydino.models.saved import load_generator
from raydino.pyramids import schema
from raydino.pyramids.batch import Targets, columns
from raydino.train import loop
from raydino.train.monitor import Validator
from raydino.train.session import LocalSession

VARIANTS = {
    "no guard": ["loss.shift_px=0", "loss.color_weight=0"],
    "colour only": ["loss.shift_px=0"],
    "shift only": ["loss.color_weight=0"],
    "shift + colour": [],
}


def high_frequency(images: torch.Tensor, size: int) -> float:
    """Mean energy of what the ``size`` px low-pass leaves out."""
    low = resize(resize(images, size), images.shape[-1])
    return float((images - low).pow(2).mean())


def real_images(pyramid_dir: str, count: int, resolution: int) -> torch.Tensor:
    """The first ``count`` source images by id (the validation rows), cropped as extraction crops them."""
    table = pa.concat_tables([pq.read_table(f, columns=[schema.ID, schema.PATH]) for f in schema.shard_files(pyramid_dir)])
    paths = table.sort_by(schema.ID)[schema.PATH].to_pylist()[:count]
    return to_float(np.stack([read_image(p, resolution) for p in paths]))


def train_variant(cfg: Config, pyramid_dir: str, run_dir: Path) -> Path:
    """Train in this process (no Ray) and return the last checkpoint, whose EMA weights are scored."""
    session = LocalSession(pyramid_dir, columns(cfg.pyramids.sizes), seed=cfg.train.seed, checkpoints=run_dir / "ckpt")
    loop.fit_generator(cfg, pyramid_dir, run_dir, session)
    return next(session.checkpoint_dirs())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pyramids", required=True)
    p.add_argument("--heldout-dino", required=True, help="a second DINOv2 (demo: models/dinov2-tiny-fd)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--shift-px", type=int, default=2)
    p.add_argument("--out", required=True, help="working folder; results.json is written here")
    args = p.parse_args(argv)
    manifest = schema.read_manifest(args.pyramids)
    out = Path(args.out)
    base = [f"pyramids.dino={manifest['dino']['source']}", f"pyramids.sizes={manifest['levels']}",
            f"model.max_resolution={args.resolution}", "model.channels=[48,32,24,16,8]", "model.code_dim=16",
            "model.noise_dim=8", f"loss.shift_px={args.shift_px}", "train.num_workers=1", "train.val_count=32",
            f"train.stages=[{{resolution: {args.resolution}, images: {8 * args.steps}, batch_size: 8, lr: 0.003}}]",
            f"train.checkpoint_every={args.steps}", f"train.sample_every={args.steps}", "train.log_every=50"]
    torch.set_num_threads(1)
    sizes = manifest["levels"]
    real = real_images(args.pyramids, 32, args.resolution)
    heldout = load_dino(args.heldout_dino)
    with torch.no_grad():
        real_tokens = Targets(tokens=[t for _, t in dino_levels(heldout, real, sizes)], cls=[], thumb=real)
    results = {"real": {"hf": high_frequency(real, load_config("demo").loss.color_size)}}
    for name, overrides in VARIANTS.items():
        cfg = load_config("demo", overrides=base + overrides)
        ckpt = train_variant(cfg, args.pyramids, out / name.replace(" ", "_").replace("+", "and"))
        model, _ = load_generator(ckpt, weights=Checkpoint.EMA)
        val = Validator(load_dino(cfg.pyramids.dino), sizes, args.pyramids, 32, cfg.model.noise_dim,
                        args.resolution, cfg.train.seed, torch.device("cpu"))
        images = val.render(model, args.resolution)
        train_d = level_distances(val.dino, images, val.targets, sizes)
        held_d = level_distances(heldout, images, real_tokens, sizes)
        results[name] = {"train_dist": float(np.mean(list(train_d.values()))),
                         "heldout_dist": float(np.mean(list(held_d.values()))),
                         "hf_ratio": high_frequency(images, cfg.loss.color_size) / results["real"]["hf"],
                         "colour_l1": float((resize(images, 8) - resize(real, 8)).abs().mean())}
        print(name, json.dumps(results[name]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
