"""Weight-independent quality figures: FD-DINOv2, CLIP score, colour error.

These judge runs and Tune trials, so none of them may depend on the loss
weights being searched (a weighted loss rewards weights going to zero).
"""

from __future__ import annotations

import numpy as np
import torch

from raydino.models.loading import Clip, Dino
from raydino.pyramids.features import clip_image_embedding, dino_levels, resize


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance in float64 (FD is a difference of large terms)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors of shape [N, D], got {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) equals tr((S1^(1/2) S2 S1^(1/2))^(1/2)), whose argument is
    symmetric PSD, so symmetric eigendecompositions give it without the complex
    round-off that ``scipy.linalg.sqrtm`` of the non-symmetric product has.
    """
    s1 = _sqrt_psd(sigma1)
    inner = s1 @ sigma2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt, 0.0))


def fd(features_a: np.ndarray, features_b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


@torch.no_grad()
def dino_cls(dino: Dino, images: torch.Tensor, size: int = 224, batch_size: int = 64) -> np.ndarray:
    """CLS embeddings of [0, 1] images at one input size, batched."""
    out = []
    for i in range(0, len(images), batch_size):
        (cls, _), = dino_levels(dino, images[i : i + batch_size].to(next(dino.model.parameters()).device), [size])
        out.append(cls.float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def clip_score(clip: Clip, images: torch.Tensor, prompts: list[str]) -> np.ndarray:
    """Cosine between each image and its prompt (``len(images) == len(prompts)``)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    img = clip_image_embedding(clip, images.to(next(clip.model.parameters()).device))
    return (img * clip.encode_text(prompts)).sum(-1).cpu().numpy()


def colour_error(images: torch.Tensor, thumbs: torch.Tensor) -> float:
    """Mean absolute RGB error (0-1 scale) at thumbnail size: DINO is colour-blind."""
    target = thumbs.permute(0, 3, 1, 2).float() / 255.0 if thumbs.dtype == torch.uint8 else thumbs
    return float((resize(images.float(), target.shape[-1]) - target.to(images.device)).abs().mean())
