"""``raydino bench sensitivity``: can the DINOv2 loss see eyes at the generator's resolution?

Issue 25's question, asked of any encoder and resolution. For held-out
synthetic faces: the unweighted patch-token distance the generator is
trained on (mean ``1 - cos`` over the pyramid's levels) between each face's
pyramid targets (the face at the pyramid's read size) and images a generator
could draw at ``--resolution``:

- the real face, resized (what a perfect generator scores: the floor);
- the same face with its eyes, mouth and glasses painted over (skin and hair
  show through), which is the one image the loss must rank below the real
  face for the parts to be worth learning;
- the real face at half the resolution, upsampled; the real face blurred;
- the mean image of the faces (what a generator that ignores its code draws).

Each figure is printed beside the real face's, as a ratio: the loss can
teach the parts when the painted face's ratio is well above 1.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from raydino.bench.record import header, save
from raydino.data.synth_faces import render_face, sample_attributes
from raydino.evaluation.metrics import match_resolution
from raydino.evaluation.part_figures import SCORED
from raydino.losses import cosine_distance
from raydino.models.encoders import dino_levels
from raydino.models.loading import load_dino
from raydino.models.shipping import SHIPPED

FACE_SEED = 30_000  # faces of no run's training or held-out set


def _faces(count: int, size: int, omit: tuple[str, ...] = ()) -> np.ndarray:
    attrs = [sample_attributes(np.random.default_rng([FACE_SEED, i])) for i in range(count)]
    return np.stack([np.asarray(render_face(a, size, omit=omit)) for a in attrs])


@torch.no_grad()
def distance(dino, images: torch.Tensor, targets: list[torch.Tensor], sizes: list[int]) -> float:
    """Mean over levels of the patch tokens' ``1 - cos`` against ``targets``."""
    levels = dino_levels(dino, images, sizes)
    return float(np.mean([float(cosine_distance(tok, tgt)) for (_, tok), tgt in zip(levels, targets, strict=True)]))


def run_bench(dino: str | None = None, sizes: list[int] | None = None, count: int = 48, face_size: int = 128,
              resolution: int = 32, out: str | None = None) -> dict:
    sizes = sizes or [112, 84, 56]
    source = dino or str(SHIPPED / "demo" / "dinov2-tiny")
    encoder = load_dino(source, "cpu")
    t0 = time.time()
    read = max(sizes)
    real_read = match_resolution(_faces(count, face_size), read)
    targets = [tok for _, tok in dino_levels(encoder, real_read, sizes)]
    real = match_resolution(real_read, resolution)
    painted = match_resolution(match_resolution(_faces(count, face_size, omit=SCORED), read), resolution)
    half = F.interpolate(match_resolution(real_read, resolution // 2), size=resolution, mode="bilinear",
                         align_corners=False)
    images = {
        "real, resized": real,
        "eyes, mouth and glasses painted over": painted,
        f"real at {resolution // 2} px, upsampled": half,
        "real, blurred (sigma 1 px)": gaussian_blur(real, kernel_size=5, sigma=1.0),
        "the mean image": real.mean(0, keepdim=True).expand_as(real),
    }
    figures = {name: distance(encoder, x, targets, sizes) for name, x in images.items()}
    floor = figures["real, resized"]
    print(f"patch-token distance to the pyramid targets ({encoder.source}, hash {encoder.hash}; levels {sizes}; "
          f"{count} faces at {resolution} px):")
    for name, value in figures.items():
        print(f"  {name:<40} {value:.4f}   x{value / floor:.1f} the real face's")
    results = {**header("sensitivity"), "encoder": f"{encoder.source} (hash {encoder.hash})", "sizes": sizes,
               "faces": count, "face_seed": FACE_SEED, "resolution": resolution, "distance": figures,
               "ratio_to_real": {k: v / floor for k, v in figures.items()}, "seconds": round(time.time() - t0, 1)}
    save(results, out)
    return results

