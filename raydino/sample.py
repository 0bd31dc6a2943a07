"""Sampling (``raydino sample``): coarse code -> image in one generator pass.

Codes come from a real image (its coarsest DINOv2 level), from the prior,
from text (CLIP text embedding -> mapping), or from mixing two codes. Loads
the run's EMA generator without Ray; batches on the GPU when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from torchvision.utils import make_grid

from raydino.models.generator import Noise
from raydino.models.loading import Clip, Dino, load_clip, load_dino
from raydino.models.prior import PCAGaussianPrior
from raydino.pyramids.features import dino_levels, square_crop, to_float
from raydino.train.checkpoint import GENERATOR, load_generator
from raydino.train.mapping import PRIOR_FILE, load_mapping

REGIONS = ("top", "bottom", "left", "right")


@dataclass
class Row:
    """One labelled row of a sample grid."""

    label: str
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    captions: list[str] = field(default_factory=list)


class Sampler:
    """A trained run, ready to turn codes into images."""

    def __init__(self, run_dir: str | Path, device: str | None = None):
        self.run_dir = Path(run_dir)
        if not (self.run_dir / GENERATOR).is_file():
            raise FileNotFoundError(f"{self.run_dir}: not a finished run ({GENERATOR} missing; train it first)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.generator, self.cfg = load_generator(self.run_dir, self.device)
        self.resolution = self.cfg.train.stages[-1].resolution

    @cached_property
    def dino(self) -> Dino:
        return load_dino(self.cfg.pyramids.dino, self.device)

    @cached_property
    def clip(self) -> Clip:
        if not self.cfg.pyramids.clip:
            raise ValueError(f"{self.run_dir}: the run's config names no CLIP model (pyramids.clip)")
        return load_clip(self.cfg.pyramids.clip, self.device)

    def noise(self, n: int, seed: int) -> Noise:
        """``n`` draws (style vector and per-pixel maps) at the run's resolution, a function of ``seed`` only."""
        return self.generator.draw_noise(n, self.resolution, torch.Generator().manual_seed(seed), self.device)

    @torch.no_grad()
    def generate(self, codes: torch.Tensor, noise: Noise) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.generator(codes.to(self.device), noise, self.resolution)
        return out.float().clamp(0, 1).cpu()

    def load_image(self, path: str | Path) -> torch.Tensor:
        """[1, 3, S, S] float image at the pyramid's largest size, preprocessed like the pyramid."""
        try:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img).convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from None
        return to_float(square_crop(img, max(self.cfg.pyramids.sizes))[None])

    @torch.no_grad()
    def code_from_image(self, image: torch.Tensor) -> torch.Tensor:
        (_, tokens), = dino_levels(self.dino, image.to(self.device), self.cfg.pyramids.sizes[:1])
        return tokens.float()

    @torch.no_grad()
    def code_from_text(self, prompts: list[str]) -> torch.Tensor:
        mapping = load_mapping(self.run_dir).to(self.device)
        return mapping.code(self.clip.encode_text(prompts))

    def prior(self) -> PCAGaussianPrior:
        path = self.run_dir / PRIOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: this run has no prior (fit one with `raydino fit-codes`)")
        return PCAGaussianPrior.load(path)

    # --- modes ----------------------------------------------------------------------------

    def from_image(self, path: str | Path, n: int, seed: int) -> list[Row]:
        image = self.load_image(path)
        code = self.code_from_image(image).expand(n, -1, -1)
        out = self.generate(code, self.noise(n, seed))
        source = torch.nn.functional.interpolate(image, size=self.resolution, mode="bilinear", antialias=True)
        return [Row(f"image: {Path(path).name}", torch.cat([source, out]),
                    ["input", "reconstruction"] + [f"variation {i}" for i in range(1, n)])]

    def from_prompts(self, prompts: list[str], n: int, seed: int) -> list[Row]:
        codes = self.code_from_text(prompts)
        return [Row(f'"{p}"', self.generate(c[None].expand(n, -1, -1), self.noise(n, seed)))
                for p, c in zip(prompts, codes, strict=True)]

    def from_prior(self, n: int, seed: int) -> list[Row]:
        codes = self.prior().sample(n, torch.Generator().manual_seed(seed))
        return [Row("prior", self.generate(codes, self.noise(n, seed + 1)))]

    def mix(self, a: str | Path, b: str | Path, region: str, seed: int) -> list[Row]:
        ca, cb = (self.code_from_image(self.load_image(p)) for p in (a, b))
        noise = self.noise(1, seed).expand(4)
        codes = torch.cat([ca, cb, swap_region(ca, cb, region), swap_region(cb, ca, region)])
        return [Row(f"mix ({region})", self.generate(codes, noise),
                    ["A", "B", f"A + {region} of B", f"B + {region} of A"])]


def swap_region(base: torch.Tensor, donor: torch.Tensor, region: str) -> torch.Tensor:
    """``base`` with one half of its token grid taken from ``donor``."""
    if region not in REGIONS:
        raise ValueError(f"unknown region '{region}' (choose from {', '.join(REGIONS)})")
    b, t, d = base.shape
    g = int(round(t ** 0.5))
    out, src = base.clone().view(b, g, g, d), donor.view(b, g, g, d)
    h = g // 2
    sl = {"top": (slice(0, h), slice(None)), "bottom": (slice(g - h, g), slice(None)),
          "left": (slice(None), slice(0, h)), "right": (slice(None), slice(g - h, g))}[region]
    out[:, sl[0], sl[1]] = src[:, sl[0], sl[1]]
    return out.view(b, t, d)


def save_grid(rows: list[Row], path: str | Path, cell: int = 96) -> Path:
    """One PNG: a label strip above each row of images (upscaled to ``cell`` px)."""
    tiles = []
    for row in rows:
        imgs = torch.nn.functional.interpolate(row.images, size=cell, mode="nearest")
        grid = make_grid(imgs, nrow=len(imgs), padding=2, pad_value=1.0)
        arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        strip = Image.new("RGB", (arr.shape[1], 30 if row.captions else 16), "white")
        draw = ImageDraw.Draw(strip)
        draw.text((4, 2), row.label, fill="black")
        for i, caption in enumerate(row.captions):
            draw.text((4 + i * (cell + 2), 16), caption[: cell // 6], fill=(90, 90, 90))
        tiles.append(np.concatenate([np.asarray(strip), arr]))
    width = max(t.shape[1] for t in tiles)
    canvas = np.full((sum(t.shape[0] for t in tiles), width, 3), 255, np.uint8)
    y = 0
    for t in tiles:
        canvas[y : y + t.shape[0], : t.shape[1]] = t
        y += t.shape[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


def save_each(rows: list[Row], directory: str | Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for r, row in enumerate(rows):
        for i, img in enumerate(row.images):
            p = directory / f"row{r}_{i:02d}.png"
            Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(p)
            paths.append(p)
    return paths


def noise_grid(run_dir: str | Path, images: list[str], out: str | Path, n: int = 8, seed: int = 0) -> list[Row]:
    """Per image a row: the input, then ``n`` draws for its one coarse code. What the noise decides, and what not."""
    sampler = Sampler(run_dir)
    rows = []
    for path in images:
        image = sampler.load_image(path)
        draws = sampler.generate(sampler.code_from_image(image).expand(n, -1, -1), sampler.noise(n, seed))
        source = torch.nn.functional.interpolate(image, size=sampler.resolution, mode="bilinear", antialias=True)
        rows.append(Row(f"{Path(path).name}: input, then {n} noise draws ({sampler.cfg.loss.kind} loss)",
                        torch.cat([source, draws])))
    save_grid(rows, out)
    return rows


def sample(run_dir: str | Path, out: str | Path, *, from_image: str | None = None, prompts: list[str] | None = None,
           prior: bool = False, mix: list[str] | None = None, region: str = "top", n: int = 8, seed: int = 0,
           save_each_dir: bool = False) -> list[Row]:
    """Run every requested mode and write one labelled grid to ``out``."""
    if not (from_image or prompts or prior or mix):
        raise ValueError("choose a mode: --from-image PATH, --prompt TEXT, --prior or --mix A B")
    sampler = Sampler(run_dir)
    rows: list[Row] = []
    if from_image:
        rows += sampler.from_image(from_image, n, seed)
    if prompts:
        rows += sampler.from_prompts(prompts, n, seed)
    if prior:
        rows += sampler.from_prior(n, seed)
    if mix:
        rows += sampler.mix(mix[0], mix[1], region, seed)
    save_grid(rows, out)
    if save_each_dir:
        save_each(rows, Path(out).with_suffix(""))
    return rows

