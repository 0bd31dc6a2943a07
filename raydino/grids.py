"""Labelled PNG grids of sampled images: a row of images under each label, every image at one cell size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid


@dataclass
class Row:
    """One labelled row of a sample grid."""

    label: str
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    captions: list[str] = field(default_factory=list)


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stack(tiles)).save(path)
    return path


def stack(tiles: list[np.ndarray]) -> np.ndarray:
    """HWC uint8 tiles one above the other, left-aligned on white."""
    canvas = np.full((sum(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles), 3), 255, np.uint8)
    y = 0
    for t in tiles:
        canvas[y : y + t.shape[0], : t.shape[1]] = t
        y += t.shape[0]
    return canvas


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
