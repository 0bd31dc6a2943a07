"""Text control without captions: CLIP embedding -> coarse code.

The mapping is trained on CLIP *image* embeddings of the training images and
used with CLIP *text* embeddings at sampling time; CLIP's joint space makes
the two interchangeable up to the modality gap. Following LAFITE (Zhou et al.
2022), each training embedding is perturbed with Gaussian noise of relative
size ``noise`` and re-normalised, so the mapping learns a neighbourhood of
image embeddings wide enough to contain the matching text embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def perturb(emb: torch.Tensor, noise: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """LAFITE's fixed perturbation: h + xi * ||h|| * eps / ||eps||, re-normalised."""
    eps = torch.randn(emb.shape, generator=generator, device=emb.device, dtype=emb.dtype)
    eps = eps / eps.norm(dim=-1, keepdim=True) * emb.norm(dim=-1, keepdim=True)
    return F.normalize(emb + noise * eps, dim=-1)


class TextToCode(nn.Module):
    """An MLP from a unit CLIP embedding to coarse-code tokens ``[tokens, dim]``.

    Targets are standardised with the training set's per-channel statistics
    (kept as buffers), so every token channel counts equally in the loss.
    """

    def __init__(self, clip_dim: int, tokens: int, dim: int, hidden: int = 512):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.net = nn.Sequential(
            nn.Linear(clip_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, tokens * dim)
        )
        self.register_buffer("code_mean", torch.zeros(dim))
        self.register_buffer("code_std", torch.ones(dim))

    def set_code_stats(self, codes: torch.Tensor) -> None:
        flat = codes.reshape(-1, self.dim).float()
        self.code_mean.copy_(flat.mean(0))
        self.code_std.copy_(flat.std(0).clamp_min(1e-4))

    def standardise(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self.code_mean) / self.code_std

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Standardised code prediction: what the loss sees (and DDP wraps)."""
        return self.net(emb).view(-1, self.tokens, self.dim)

    def code(self, emb: torch.Tensor) -> torch.Tensor:
        """The coarse code, in DINO token units, for a unit CLIP embedding."""
        return self(emb) * self.code_std + self.code_mean
