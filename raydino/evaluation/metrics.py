"""Weight-independent quality figures: FD-DINOv2 with its floor, paired distance, CLIP score, colour error.

These judge runs and Tune trials, so none of them may depend on the loss
weights being searched (a weighted loss rewards weights going to zero).
Generated and real images are compared at the same resolution: real images
are first resized to the generator's output size, so a 32 px generator is
not charged for the detail a 32 px image cannot hold.
"""

from __future__ import annotations

import numpy as np
import torch

from raydino.losses import cosine_distance
from raydino.models.encoders import clip_image_embedding, dino_levels, resize, to_float
from raydino.models.loading import Clip, Dino
from raydino.pyramids.batch import Targets


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


def fd_with_floor(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """FD of generated features against real ones, beside the real-vs-real floor at the same ``n``.

    ``real`` is split into two disjoint halves A and B: the floor is
    FD(A, B), the figure FD(generated[:n], B) with ``n = len(B)``, so both
    compare ``n`` against the same ``n`` real images and differ only in what
    the first set is. (``generated[i]`` is meant to come from A's rows, or
    from nothing: never from B's, which it is compared with.)
    """
    half = len(real) // 2
    a, b = real[:half], real[half : 2 * half]
    if half < 2 or len(generated) < half:
        raise ValueError(f"FD with a floor needs at least 4 real and {half} generated feature vectors")
    return {"value": fd(generated[:half], b), "floor": fd(a, b), "n": half}


def match_resolution(images: torch.Tensor | np.ndarray, resolution: int) -> torch.Tensor:
    """Real images (uint8 HWC or float CHW) as a ``resolution`` px generator would see them, in [0, 1]."""
    x = to_float(images) if isinstance(images, np.ndarray) else images.float()
    return resize(x, resolution).clamp(0, 1)


@torch.no_grad()
def paired_distance(encoder: Dino, generated: torch.Tensor, real: torch.Tensor, size: int,
                    batch_size: int = 64) -> dict[str, float]:
    """Mean ``1 - cos`` between each generated image and its own real image, patch tokens and CLS.

    Low variance at small ``n`` (each pair is its own comparison), so it can
    rank Tune trials on a few held-out images; it says nothing about
    diversity, which FD does.
    """
    device = next(encoder.model.parameters()).device
    patch, cls, n = 0.0, 0.0, len(generated)
    for i in range(0, n, batch_size):
        (gc, gt), = dino_levels(encoder, generated[i : i + batch_size].to(device).float(), [size])
        (rc, rt), = dino_levels(encoder, real[i : i + batch_size].to(device).float(), [size])
        patch += float(cosine_distance(gt, rt)) * len(gt)
        cls += float(cosine_distance(gc, rc)) * len(gc)
    return {"patch": patch / n, "cls": cls / n, "mean": (patch + cls) / (2 * n)}


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


def noise_spread(draws: torch.Tensor, real: torch.Tensor) -> float:
    """How much the noise moves the image, relative to how much real images differ.

    ``draws [C, k, 3, H, W]``: k noise draws for each of C codes. The mean
    over codes and pixels of the per-pixel standard deviation across draws,
    divided by the mean per-pixel standard deviation across the ``real``
    images ``[N, 3, H, W]``. 0: the noise is ignored; a perfect model scores
    the share of the images' variation that the code leaves open.
    """
    if draws.ndim != 5 or draws.shape[1] < 2:
        raise ValueError(f"need draws [codes, k >= 2, 3, H, W], got {tuple(draws.shape)}")
    if draws.shape[-2:] != real.shape[-2:]:
        raise ValueError(f"draws at {tuple(draws.shape[-2:])} px, real images at {tuple(real.shape[-2:])} px")
    return float(draws.float().std(dim=1).mean() / real.float().std(dim=0).mean().clamp_min(1e-12))


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Per image, the variance of the 3x3 Laplacian of the luminance: high for sharp detail, low for blur."""
    luma = (images.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return torch.nn.functional.conv2d(luma, kernel).flatten(1).var(dim=1)


def sharpness_ratio(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Mean Laplacian variance of generated images over that of real ones at the same resolution (1: as sharp)."""
    if generated.shape[-2:] != real.shape[-2:]:
        raise ValueError(f"generated at {tuple(generated.shape[-2:])} px, real at {tuple(real.shape[-2:])} px")
    return float(laplacian_variance(generated).mean() / laplacian_variance(real).mean().clamp_min(1e-12))


@torch.no_grad()
def level_distances(dino: Dino, images: torch.Tensor, targets: Targets, sizes: list[int]) -> dict[int, float]:
    """Unweighted patch-token distance at every level, no shift: the weight-independent validation figure."""
    levels = dino_levels(dino, images.float(), sizes)
    return {size: float(cosine_distance(tok, tgt)) for size, (_, tok), tgt in zip(sizes, levels, targets.tokens, strict=True)}


def level_figures(prefix: str, distances: dict[int, float]) -> dict[str, float]:
    """``{prefix}/dist_<size>`` per level and ``{prefix}/dist_unweighted``, their mean."""
    out = {f"{prefix}/dist_{s}": d for s, d in distances.items()}
    out[f"{prefix}/dist_unweighted"] = sum(distances.values()) / len(distances)
    return out
