"""``raydino eval``: weight-independent figures of a finished run on held-out pyramids.

- per-level unweighted patch-token distance of reconstructions, under the
  *training* DINOv2 (labelled so: a generator trained on one network's
  features can score well on it without looking right);
- FD-DINOv2 between generated and real images, under a *separate* encoder
  (``sample.fd_encoder``; the published metric uses DINOv2 ViT-L/14), for
  reconstructions and for prior samples;
- CLIP score of prompt samples, matched against mismatched prompts;
- colour error against the stored thumbnails;
- attribute agreement of reconstructions, prompt and prior samples, by a
  classifier of the synthetic faces' attributes (``raydino.attribute_agreement``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from raydino.attribute_agreement import attribute_figures
from raydino.losses import Targets, columns, level_distances
from raydino.metrics import clip_score, colour_error, dino_cls, fd
from raydino.models.loading import load_dino
from raydino.pyramids import schema
from raydino.pyramids.features import dino_levels, square_crop, to_float
from raydino.sample import Sampler
from raydino.train.mapping import MAPPING_FILE, PRIOR_FILE
from raydino.train.session import read_first_rows

EVAL_FILE = "eval.json"


def _real_images(paths: list[str], size: int) -> torch.Tensor:
    """The held-out images themselves, preprocessed like the pyramid (FD needs pixels for its own encoder)."""
    out = []
    for p in paths:
        try:
            with Image.open(p) as img:
                out.append(square_crop(ImageOps.exif_transpose(img).convert("RGB"), size))
        except OSError as exc:
            raise FileNotFoundError(f"FD needs the pyramid's source images; cannot read {p}: {exc}") from None
    return to_float(np.stack(out))


def evaluate(run_dir: str | Path, pyramids: str | Path, n: int = 64, seed: int = 0,
             prompts: list[str] | None = None, per_prompt: int = 4) -> dict:
    """Compute every figure, write ``RUN_DIR/eval.json`` and TensorBoard scalars, return the figures."""
    run_dir = Path(run_dir)
    s = Sampler(run_dir)
    cfg, sizes = s.cfg, s.cfg.pyramids.sizes
    schema.check_manifest(schema.read_manifest(pyramids), levels=sizes, dino_source=s.dino.source, dim=s.dino.dim,
                          where=str(pyramids))
    rows = read_first_rows(pyramids, [*columns(sizes), "path"], n)
    n = len(rows["path"])
    if n < 2:
        raise ValueError(f"{pyramids}: eval needs at least 2 held-out rows, found {n}")
    targets = Targets.from_batch(rows, sizes, s.device)
    recon = s.generate(targets.code, s.noise(n, seed))
    out: dict = {"run": str(run_dir), "pyramids": str(pyramids), "n": n,
                 "training_encoder": f"{s.dino.source} (hash {s.dino.hash})"}
    dist = level_distances(s.dino, recon.to(s.device), targets, sizes)
    out |= {f"train_encoder/dist_{k}": v for k, v in dist.items()}
    out["train_encoder/dist_unweighted"] = float(np.mean(list(dist.values())))
    out["colour_error"] = colour_error(recon, targets.thumb.cpu())

    fd_dino = load_dino(cfg.sample.fd_encoder or cfg.pyramids.dino, s.device)
    out["fd_encoder"] = f"{fd_dino.source} (hash {fd_dino.hash})"
    size = max(sizes)
    real = dino_cls(fd_dino, _real_images(list(rows["path"]), size), size)
    out["fd_dinov2/reconstructions"] = fd(dino_cls(fd_dino, recon, size), real)
    with torch.no_grad():
        (gen_cls, _), = dino_levels(s.dino, recon.to(s.device), [size])
    out["train_encoder/fd_reconstructions"] = fd(gen_cls.float().cpu().numpy(), rows[schema.cls_col(size)])
    if (run_dir / PRIOR_FILE).is_file():
        prior = s.from_prior(n, seed)[0].images
        out["fd_dinov2/prior"] = fd(dino_cls(fd_dino, prior, size), real)
    out |= attribute_figures(s, recon, list(rows["path"]), size, n, seed, prompts)

    if prompts and (run_dir / MAPPING_FILE).is_file():
        out |= prompt_scores(s, prompts, per_prompt, seed)
    (run_dir / EVAL_FILE).write_text(json.dumps(out, indent=1))
    _to_tensorboard(run_dir, out)
    return out


def prompt_scores(s: Sampler, prompts: list[str], per_prompt: int, seed: int) -> dict:
    """CLIP score of each prompt's samples with their own prompt, and with the other prompts."""
    rows = s.from_prompts(prompts, per_prompt, seed)
    out, matched, mismatched = {}, [], []
    for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
        own = float(clip_score(s.clip, row.images, [prompt] * len(row.images)).mean())
        others = [float(clip_score(s.clip, row.images, [q] * len(row.images)).mean())
                  for j, q in enumerate(prompts) if j != i]
        out[f"clip_score/{prompt}"] = own
        matched.append(own)
        mismatched.extend(others)
    out["clip_score/matched"] = float(np.mean(matched))
    if mismatched:
        out["clip_score/mismatched"] = float(np.mean(mismatched))
    return out


def _to_tensorboard(run_dir: Path, figures: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    step = json.loads((run_dir / "metrics.json").read_text()).get("step", 0) if (run_dir / "metrics.json").exists() else 0
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for key, value in figures.items():
            if isinstance(value, float):
                writer.add_scalar(f"eval/{key}", value, step)
