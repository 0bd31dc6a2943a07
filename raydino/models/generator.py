"""The progressive generator: coarse DINOv2 code + noise -> image, 16 to 256 px.

One pass, no discriminator, no iterative sampling. The coarse code (the
coarsest pyramid level's patch tokens, ``[B, g*g, D]``) is projected to a small
width and laid out on its ``g x g`` grid, which fixes the layout; a global
style vector (noise + pooled code) modulates every block, which is where the
details the code does not pin down can vary. Blocks double the resolution
from 16 px; each has its own to-RGB, and a new stage is faded in ProGAN-style:
``alpha * rgb_new + (1 - alpha) * upsample(rgb_previous)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raydino.config import ModelConfig

BASE_RESOLUTION = 16


def resolutions(max_resolution: int) -> list[int]:
    """The stage resolutions 16, 32, ... up to ``max_resolution`` (a power-of-two multiple of 16)."""
    out = [BASE_RESOLUTION]
    while out[-1] < max_resolution:
        out.append(out[-1] * 2)
    if out[-1] != max_resolution:
        raise ValueError(f"model.max_resolution {max_resolution} is not 16 * 2**k")
    return out


class ModulatedConv(nn.Module):
    """3x3 conv -> GroupNorm -> FiLM from the style vector -> SiLU.

    Normalising then re-scaling per sample (AdaGN) lets the style vector
    change contrast and colour of every feature map without a discriminator
    to push it there.
    """

    def __init__(self, cin: int, cout: int, style_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)  # GroupNorm would cancel a bias
        self.norm = nn.GroupNorm(min(8, cout), cout, affine=False)
        self.film = nn.Linear(style_dim, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)  # starts as a plain conv block

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(style)[:, :, None, None].chunk(2, dim=1)
        return F.silu(self.norm(self.conv(x)) * (1 + scale) + shift)


class Block(nn.Module):
    """Two modulated convs at one resolution, after an optional 2x upsampling."""

    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.conv1 = ModulatedConv(cin, cout, style_dim)
        self.conv2 = ModulatedConv(cout, cout, style_dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv2(self.conv1(x, style), style)


class Generator(nn.Module):
    """Coarse code ``[B, grid*grid, code_tokens_dim]`` + noise ``[B, noise_dim]`` -> ``[B, 3, res, res]`` in [0, 1].

    Every block up to ``cfg.max_resolution`` exists from the start (so the
    optimizer and the checkpoint never change shape); a stage only decides
    how far the forward pass goes.
    """

    def __init__(self, cfg: ModelConfig, code_tokens_dim: int, grid: int):
        super().__init__()
        self.resolutions = resolutions(cfg.max_resolution)
        if len(cfg.channels) < len(self.resolutions):
            raise ValueError(f"model.channels needs {len(self.resolutions)} widths for 16..{cfg.max_resolution} px, "
                             f"got {cfg.channels}")
        self.grid, self.noise_dim, self.code_tokens_dim = grid, cfg.noise_dim, code_tokens_dim
        ch = cfg.channels[: len(self.resolutions)]
        style_dim = cfg.code_dim + cfg.noise_dim
        # DINO tokens carry a few very large channels; LayerNorm keeps the projection well-conditioned
        self.code_in = nn.Sequential(nn.LayerNorm(code_tokens_dim), nn.Linear(code_tokens_dim, cfg.code_dim))
        self.style = nn.Sequential(nn.Linear(style_dim, style_dim), nn.SiLU(), nn.Linear(style_dim, style_dim))
        self.blocks = nn.ModuleList(
            [Block(cfg.code_dim, ch[0], style_dim, upsample=False)]
            + [Block(ch[i - 1], ch[i], style_dim, upsample=True) for i in range(1, len(ch))]
        )
        self.to_rgb = nn.ModuleList([nn.Conv2d(c, 3, 1) for c in ch])

    def forward(self, code: torch.Tensor, noise: torch.Tensor, resolution: int, alpha: float = 1.0) -> torch.Tensor:
        if resolution not in self.resolutions:
            raise ValueError(f"resolution {resolution} is not one of {self.resolutions}")
        b, t, _ = code.shape
        if t != self.grid * self.grid:
            raise ValueError(f"code has {t} tokens, the generator expects {self.grid}x{self.grid}")
        c = self.code_in(code)                                          # [B, T, code_dim]
        style = self.style(torch.cat([c.mean(1), noise], dim=1))
        x = c.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        x = F.interpolate(x, size=BASE_RESOLUTION, mode="bilinear", align_corners=False)
        stage = self.resolutions.index(resolution)
        prev = x
        for block in self.blocks[: stage + 1]:
            prev, x = x, block(x, style)
        image = torch.sigmoid(self.to_rgb[stage](x))
        if stage > 0 and alpha < 1.0:
            skip = torch.sigmoid(self.to_rgb[stage - 1](prev))
            image = alpha * image + (1 - alpha) * F.interpolate(skip, scale_factor=2, mode="nearest")
        return image
