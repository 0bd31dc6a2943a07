"""What rank 0 watches: fixed validation codes, their distances and grids, TensorBoard, progress lines.

Two sets, labelled apart:

- ``val/*``: the EMA generator on the first ``train.val_count`` *training*
  rows (by id) with fixed noise, scored by the unweighted per-level patch
  distance under the *training* encoder. It shows how well codes are turned
  back into images, watched every few steps; it is not a held-out figure.
- ``heldout/*``: the same number of *held-out* images (a separate pyramid)
  against their reconstructions at the stage's resolution, under the
  *evaluation* encoder (``eval.fd_encoder``), at step 0 and each stage end.
  No swept key enters it, and the generator was never fitted to that
  encoder or those images: it is what Tune ranks trials by.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from raydino.evaluation.metrics import level_distances, level_figures, match_resolution, paired_distance
from raydino.models.encoders import resize
from raydino.models.generator import ProgressiveGenerator, draw_noise
from raydino.models.loading import Dino
from raydino.pyramids import schema
from raydino.pyramids.batch import Targets, columns


class Validator:
    """Fixed validation codes and noise; renders and scores a generator on them."""

    def __init__(self, dino: Dino, sizes: list[int], pyramid_dir: str | Path, count: int, noise_dim: int,
                 max_resolution: int, seed: int, device: torch.device):
        self.dino, self.sizes = dino, sizes
        self.targets = Targets.from_batch(schema.read_first_rows(pyramid_dir, columns(sizes), count), sizes, device)
        rng = torch.Generator().manual_seed(seed + 7919)
        self.noise = draw_noise(len(self.targets.code), noise_dim, max_resolution, rng, device)

    @torch.no_grad()
    def render(self, model: ProgressiveGenerator, resolution: int, alpha: float = 1.0) -> torch.Tensor:
        return model(self.targets.code, self.noise, resolution, alpha).float()

    def evaluate(self, model: ProgressiveGenerator, resolution: int, alpha: float = 1.0) -> tuple[dict[str, float], torch.Tensor]:
        images = self.render(model, resolution, alpha)
        return level_figures("val", level_distances(self.dino, images, self.targets, self.sizes)), images

    def baselines(self, model: ProgressiveGenerator, resolution: int) -> dict[str, float]:
        """The untrained generator, and the mean image of the validation thumbnails, at ``resolution``."""
        _, step0 = self.evaluate(model, resolution)
        mean = resize(self.targets.thumb.mean(0, keepdim=True), resolution).expand(len(self.targets.thumb), -1, -1, -1)
        return {**level_figures("step0", level_distances(self.dino, step0, self.targets, self.sizes)),
                **level_figures("mean_image", level_distances(self.dino, mean, self.targets, self.sizes))}

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        """Generated next to target thumbnails, pairs side by side, four pairs a row."""
        thumbs = resize(self.targets.thumb, images.shape[-1]).clamp(0, 1)
        pairs = torch.stack([images.clamp(0, 1), thumbs], dim=1).flatten(0, 1)
        return make_grid(pairs.cpu(), nrow=8, padding=1, pad_value=1.0)


class HeldOutScore:
    """Held-out images against their reconstructions under the evaluation encoder (the sweep's objective)."""

    def __init__(self, encoder: Dino, rows: dict[str, np.ndarray], images: np.ndarray, sizes: list[int],
                 noise_dim: int, max_resolution: int, seed: int, device: torch.device):
        self.encoder, self.size, self.images = encoder, max(sizes), images
        self.code = Targets.from_batch(rows, sizes, device).code
        rng = torch.Generator().manual_seed(seed + 104729)
        self.noise = draw_noise(len(self.code), noise_dim, max_resolution, rng, device)

    @torch.no_grad()
    def __call__(self, model: ProgressiveGenerator, resolution: int, alpha: float = 1.0) -> dict[str, float]:
        generated = model(self.code, self.noise, resolution, alpha).float().clamp(0, 1)
        real = match_resolution(self.images, resolution)
        d = paired_distance(self.encoder, generated, real, self.size)
        return {"heldout/eval_dist": d["mean"], "heldout/eval_patch": d["patch"], "heldout/eval_cls": d["cls"],
                "heldout/n": float(len(self.code))}


class RunLog:
    """TensorBoard scalars and images in ``tb``, grids as PNGs, one progress line per interval.

    The prior logs to a TensorBoard folder of its own (``Run.tb_prior``), so
    resuming it (``purge_step``) never drops the generator's events.
    """

    def __init__(self, tb: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(tb), purge_step=purge_step)
        self.last_time, self.last_images = time.perf_counter(), 0

    def throughput(self, images_seen: int) -> float:
        """Images per second since the previous call (all workers together)."""
        now = time.perf_counter()
        rate = (images_seen - self.last_images) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_images = now, images_seen
        return rate

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)

    def grid(self, grid: torch.Tensor, resolution: int, step: int, path: Path) -> Path:
        self.tb.add_image(f"grid/{resolution}px", grid, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        return path

    def close(self) -> None:
        self.tb.close()
