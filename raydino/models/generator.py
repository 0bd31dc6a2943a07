"""The progressive generator: coarse DINOv2 code + noise -> image, 16 to 256 px.

One pass, no discriminator, no iterative sampling. The coarse code (the
first pyramid level's patch tokens, ``[B, g*g, D]``) is projected to a small
width and decoded to a ``model.code_resolution`` map: the ``g x g`` grid
resized, plus each token's own linear map to the pixels of its cell (a pixel
shuffle, as a ViT's patch decoder). A DINOv2 token knows where inside its
14 px patch an eye or a mouth sits; resizing alone spreads that over the
cell, and the generator drew parts far more slowly from it. The map is the
generator's input at 16 px and, resized, modulates every block after the
norm (SPADE, Park et al. 2019): a block at 32 px or more otherwise sees the
code only through what 16 px features kept of it
(docs/training.md#the-code-and-the-generator-drawing-the-parts).
What the code
leaves open (eyes, strands of hair, glasses) comes from the :class:`Noise`:
a global style vector (noise + pooled code) modulates every block, and a
per-pixel noise map per resolution, scaled per channel by learned strengths
(StyleGAN), gives each block local randomness to turn into detail. The
distributional loss (``raydino.losses``) is what makes the generator use it.
Blocks double the resolution from 16 px; each has its own to-RGB, and a new
stage is faded in ProGAN-style: ``alpha * rgb_new + (1 - alpha) * upsample(rgb_previous)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raydino.config import ModelConfig
from raydino.config.checks import BASE_RESOLUTION, check_model
from raydino.config.checks import stage_resolutions as resolutions


@dataclass
class Noise:
    """A generator's random input: a style vector and one per-pixel map per resolution up to the one drawn for."""

    z: torch.Tensor              # [B, noise_dim]
    maps: list[torch.Tensor]     # [B, 1, r, r] for r = 16, 32, ...

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, rows: slice | torch.Tensor) -> Noise:
        return Noise(self.z[rows], [m[rows] for m in self.maps])

    def to(self, device: torch.device | str) -> Noise:
        return Noise(self.z.to(device), [m.to(device) for m in self.maps])

    @staticmethod
    def cat(parts: list[Noise]) -> Noise:
        """Draws of several requests, one after another (``raydino serve``'s batches)."""
        return Noise(torch.cat([p.z for p in parts]), [torch.cat(m) for m in zip(*(p.maps for p in parts), strict=True)])

    def expand(self, n: int) -> Noise:
        """One draw shared by ``n`` images (a single-row noise, broadcast)."""
        if len(self) != 1:
            raise ValueError(f"only a single draw can be shared, this noise has {len(self)}")
        return Noise(self.z.expand(n, -1), [m.expand(n, -1, -1, -1) for m in self.maps])


def draw_noise(n: int, noise_dim: int, resolution: int, rng: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> Noise:
    """``n`` independent draws for a generator running at ``resolution`` (or below).

    With a (CPU) ``rng`` the numbers are drawn on the CPU, so a seed
    gives the same noise on every device and a checkpointed RNG resumes it;
    without one they are drawn on ``device`` directly.
    """
    where = "cpu" if rng is not None else device
    z = torch.randn(n, noise_dim, generator=rng, device=where)
    maps = [torch.randn(n, 1, r, r, generator=rng, device=where) for r in resolutions(resolution)]
    return Noise(z, maps).to(device)


class ModulatedConv(nn.Module):
    """3x3 conv -> GroupNorm -> + strength * noise map -> FiLM (style) and SPADE (code map) -> SiLU.

    Normalising then re-scaling per sample (AdaGN) lets the style vector
    change contrast and colour of every feature map without a discriminator
    to push it there; the per-pixel scale and shift from the code map say
    where each part goes, at this block's own resolution. The noise enters
    after the norm, so its learned per-channel strength is in units of the
    normalised features.
    """

    def __init__(self, cin: int, cout: int, style_dim: int, code_dim: int, noise_strength: float):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)  # GroupNorm would cancel a bias
        self.norm = nn.GroupNorm(min(8, cout), cout, affine=False)
        self.noise_strength = nn.Parameter(torch.full((cout,), noise_strength))
        self.film = nn.Linear(style_dim, 2 * cout)
        self.spade = nn.Conv2d(code_dim, 2 * cout, 1)  # 1x1 on the resized code: 3x3 drew no better, 1.45x slower
        for layer in (self.film, self.spade):  # starts as a plain conv block
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor, code_map: torch.Tensor,
                noise_map: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(style)[:, :, None, None].chunk(2, dim=1)
        local_scale, local_shift = self.spade(code_map).chunk(2, dim=1)
        h = self.norm(self.conv(x)) + self.noise_strength[:, None, None] * noise_map.to(x.dtype)
        return F.silu(h * (1 + scale + local_scale) + shift + local_shift)


class Block(nn.Module):
    """Two modulated convs at one resolution, after an optional 2x upsampling."""

    def __init__(self, cin: int, cout: int, style_dim: int, code_dim: int, upsample: bool, noise_strength: float):
        super().__init__()
        self.upsample = upsample
        self.conv1 = ModulatedConv(cin, cout, style_dim, code_dim, noise_strength)
        self.conv2 = ModulatedConv(cout, cout, style_dim, code_dim, noise_strength)

    def forward(self, x: torch.Tensor, style: torch.Tensor, code: torch.Tensor, noise_map: torch.Tensor) -> torch.Tensor:
        """Both convs read the same noise map at their own learned strengths, and the decoded code map resized."""
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        code_map = F.interpolate(code, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv2(self.conv1(x, style, code_map, noise_map), style, code_map, noise_map)


class ProgressiveGenerator(nn.Module):
    """Coarse code ``[B, grid*grid, code_tokens_dim]`` + :class:`Noise` -> ``[B, 3, res, res]`` in [0, 1].

    Every block up to ``cfg.max_resolution`` exists from the start (so the
    optimizer and the checkpoint never change shape); a stage only decides
    how far the forward pass goes.
    """

    def __init__(self, cfg: ModelConfig, code_tokens_dim: int, grid: int):
        super().__init__()
        self.resolutions = check_model(cfg)
        self.grid, self.noise_dim, self.code_tokens_dim = grid, cfg.noise_dim, code_tokens_dim
        ch = cfg.channels[: len(self.resolutions)]
        style_dim = cfg.code_dim + cfg.noise_dim
        # DINO tokens carry a few very large channels; LayerNorm keeps the projection well-conditioned
        self.code_in = nn.Sequential(nn.LayerNorm(code_tokens_dim), nn.Linear(code_tokens_dim, cfg.code_dim))
        self.code_resolution = cfg.code_resolution
        self.cell = -(-cfg.code_resolution // grid)  # pixels per token side (rounded up; resized to fit after)
        self.code_cells = nn.Linear(cfg.code_dim, cfg.code_dim * self.cell ** 2)
        nn.init.zeros_(self.code_cells.weight)  # starts as the resized code alone
        nn.init.zeros_(self.code_cells.bias)
        self.style = nn.Sequential(nn.Linear(style_dim, style_dim), nn.SiLU(), nn.Linear(style_dim, style_dim))
        self.blocks = nn.ModuleList(
            [Block(cfg.code_dim, ch[0], style_dim, cfg.code_dim, upsample=False, noise_strength=cfg.noise_strength)]
            + [Block(ch[i - 1], ch[i], style_dim, cfg.code_dim, upsample=True, noise_strength=cfg.noise_strength)
               for i in range(1, len(ch))]
        )
        self.to_rgb = nn.ModuleList([nn.Conv2d(c, 3, 1) for c in ch])

    def draw_noise(self, n: int, resolution: int, rng: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Noise:
        return draw_noise(n, self.noise_dim, resolution, rng, device)

    def decode_code(self, c: torch.Tensor) -> torch.Tensor:
        """Projected tokens ``[B, g*g, code_dim]`` -> ``[B, code_dim, R, R]``, R = ``code_resolution``."""
        b, g, size = len(c), self.grid, self.grid * self.cell
        grid = c.transpose(1, 2).reshape(b, -1, g, g)
        cells = F.pixel_shuffle(self.code_cells(c).transpose(1, 2).reshape(b, -1, g, g), self.cell)
        code_map = F.interpolate(grid, size=size, mode="bilinear", align_corners=False) + cells
        if size != self.code_resolution:
            code_map = F.interpolate(code_map, size=self.code_resolution, mode="bilinear", align_corners=False)
        return code_map

    def forward(self, code: torch.Tensor, noise: Noise, resolution: int, alpha: float = 1.0) -> torch.Tensor:
        if resolution not in self.resolutions:
            raise ValueError(f"resolution {resolution} is not one of {self.resolutions}")
        t = code.shape[1]
        if t != self.grid * self.grid:
            raise ValueError(f"code has {t} tokens, the generator expects {self.grid}x{self.grid}")
        stage = self.resolutions.index(resolution)
        if len(noise.maps) <= stage:
            raise ValueError(f"noise drawn for {BASE_RESOLUTION * 2 ** (len(noise.maps) - 1)} px, "
                             f"the generator runs at {resolution} px")
        c = self.code_in(code)                                          # [B, T, code_dim]
        style = self.style(torch.cat([c.mean(1), noise.z.to(c.dtype)], dim=1))
        code_map = self.decode_code(c)
        x = F.interpolate(code_map, size=BASE_RESOLUTION, mode="bilinear", align_corners=False)
        prev = x
        for block, noise_map in zip(self.blocks[: stage + 1], noise.maps, strict=False):
            prev, x = x, block(x, style, code_map, noise_map)
        image = torch.sigmoid(self.to_rgb[stage](x))
        if stage > 0 and alpha < 1.0:
            skip = torch.sigmoid(self.to_rgb[stage - 1](prev))
            image = alpha * image + (1 - alpha) * F.interpolate(skip, scale_factor=2, mode="nearest")
        return image
