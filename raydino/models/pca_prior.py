"""The baseline prior over coarse codes: a Gaussian in a PCA space (``--prior pca``).

It matches the codes' mean and covariance, so FD in code space cannot tell
it from the codes, yet where the codes form clusters it puts most of its
samples between them: the figure the flow prior (``flow_prior.py``) is
measured against. Fitted on the driver on a bounded sample of rows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class PCAGaussianPrior:
    """mean + components @ (sqrt(var) * z), over flattened coarse codes."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, std: torch.Tensor, shape: tuple[int, int]):
        self.mean, self.components, self.std, self.shape = mean, components, std, tuple(shape)

    @classmethod
    def fit(cls, codes: torch.Tensor, k: int) -> PCAGaussianPrior:
        """Fit on ``codes [N, tokens, dim]``; ``k`` is capped by the sample count."""
        if len(codes) < 2:
            raise ValueError("a prior needs at least 2 coarse codes")
        x = codes.reshape(len(codes), -1).double()
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(k, len(codes) - 1, vh.shape[0])
        std = s[:k] / (len(codes) - 1) ** 0.5
        return cls(mean.float(), vh[:k].float().contiguous(), std.float(), tuple(codes.shape[1:]))

    def sample(self, n: int, rng: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        z = torch.randn(n, len(self.std), generator=rng) * self.std * temperature
        return (self.mean + z @ self.components).reshape(n, *self.shape)

    def save(self, path: str | Path) -> None:
        save_file({"mean": self.mean, "components": self.components, "std": self.std,
                   "shape": torch.tensor(self.shape)}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> PCAGaussianPrior:
        t = load_file(str(path))
        return cls(t["mean"], t["components"], t["std"], tuple(t["shape"].tolist()))
