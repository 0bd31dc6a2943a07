"""Images beside the page: the page is a plain file, so every picture it shows is a file in its own folder."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from raydino.report.markup import esc

PAGE_WIDTH = 1080  # px available to an image inside a section


class Assets:
    """Images copied or written into the folder beside the page; ``src`` paths are relative to the page."""

    def __init__(self, page: Path):
        self.folder = page.parent / f"{page.stem}_files"
        if self.folder.exists():
            shutil.rmtree(self.folder)  # the page's own folder: stale images would otherwise linger
        self.folder.mkdir(parents=True)

    def add(self, name: str, image: Path | bytes | np.ndarray) -> tuple[str, tuple[int, int]]:
        """Store ``image`` (a file, encoded bytes, or uint8 HxWx3) as ``name``; return its src and size."""
        dest = self.folder / name
        if isinstance(image, Path):
            shutil.copyfile(image, dest)
        elif isinstance(image, bytes):
            dest.write_bytes(image)
        else:
            Image.fromarray(image).save(dest)
        with Image.open(dest) as img:
            size = img.size
        return f"{self.folder.name}/{name}", size

    def img(self, name: str, image: Path | bytes | np.ndarray, alt: str, min_width: int = 0,
            width: int = 0) -> str:
        """An ``<img>`` shown ``width`` px wide, or scaled up by a whole factor to at least ``min_width`` px."""
        src, (w, h) = self.add(name, image)
        scale = width / w if width else max(1, math.ceil(min_width / w)) if min_width else 1
        scale = min(scale, PAGE_WIDTH / w)
        crisp = ' class="px"' if scale >= 1 else ""  # nearest-neighbour only when enlarging
        return (f'<img{crisp} src="{esc(src)}" width="{round(w * scale)}" height="{round(h * scale)}" '
                f'alt="{esc(alt)}">')
