"""Sections of pictures: the validation grids per stage, the sample grids, and the pyramid as PCA colours."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from raydino.data.images import read_image
from raydino.layout import Samples
from raydino.pyramids import schema
from raydino.report.inputs import SNAPSHOTS, Context
from raydino.report.markup import esc, fmt, missing, table

PCA_IMAGES = 6  # images in the pyramid picture
PCA_CELL = 96   # px per image in the pyramid picture
GRID_ROWS = 4   # rows of 4 (generated, target) pairs shown per grid
SAMPLE_FILES = {  # file in the samples folder -> (section id, title, what it shows, command that makes it)
    Samples.IMAGE: ("reconstructions", "Reconstructions and variations",
                    "First column: the input image; second: the generator's reconstruction from its coarse code "
                    "(its coarsest DINOv2 level) alone; the rest: the same code with new noise.",
                    f"raydino sample --run RUN --from-image IMAGE --out SAMPLES/{Samples.IMAGE}"),
    Samples.PROMPTS: ("prompts", "Text prompts",
                      "Each row: one prompt, CLIP text embedding -> coarse code -> image. The prior's noise and the "
                      "generator's noise are the same down each column, so a column shows what the words change.",
                      f"raydino sample --run RUN --prompt TEXT ... --out SAMPLES/{Samples.PROMPTS}"),
    Samples.EDITS: ("edits", "Text-guided edits",
                    "Each row: a held-out face, its reconstruction, then edits toward one of the run's prompts: its "
                    "coarse code noised to flow time T = sample.edit_t and carried back by the prior under the prompt "
                    "(same generator noise). Lower T keeps more of the face, higher T obeys the prompt more.",
                    f"raydino sample --run RUN --from-image IMAGE --prompt TEXT ... --vary T --out SAMPLES/{Samples.EDITS}"),
    Samples.VARY: ("vary", "Variations along the flow",
                   "The input, its reconstruction, then its coarse code noised to flow time T = 0.5 and carried back "
                   "by the prior (same generator noise: only the code varies).",
                   f"raydino sample --run RUN --from-image IMAGE --vary 0.5 --out SAMPLES/{Samples.VARY}"),
    Samples.PRIOR: ("prior", "Samples from the flow prior",
                    "Coarse codes drawn by the flow-matching prior (unconditional, K ODE steps), one generator pass "
                    "each.",
                    f"raydino sample --run RUN --prior --out SAMPLES/{Samples.PRIOR}"),
    Samples.PRIOR_PCA: ("prior-pca", "Samples from the PCA Gaussian (baseline)",
                        "Coarse codes drawn from the Gaussian in PCA space fitted on a bounded sample of training "
                        "codes.",
                        f"raydino sample --run RUN --prior pca --out SAMPLES/{Samples.PRIOR_PCA}"),
    Samples.MIX: ("mix", "Mixing coarse codes",
                  "A and B, then A with one half of its coarse token grid taken from B, and the other way round.",
                  f"raydino sample --run RUN --mix A B --out SAMPLES/{Samples.MIX}"),
}


def spaced_pairs(image: Path | bytes, resolution: int, max_rows: int = GRID_ROWS) -> np.ndarray | None:
    """The monitor's grid (generated, target, ...; 8 tiles a row, 1 px apart) with a gap between pairs.

    At most ``max_rows`` rows are kept; ``None`` when the image does not have that layout.
    """
    with Image.open(image if isinstance(image, Path) else io.BytesIO(image)) as img:
        arr = np.asarray(img.convert("RGB"))
    cell = resolution + 1
    rows, cols = (arr.shape[0] - 1) // cell, (arr.shape[1] - 1) // cell
    if (arr.shape[0] - 1) % cell or (arr.shape[1] - 1) % cell or cols % 2 or not rows:
        return None
    rows = min(rows, max_rows)
    gap = max(3, resolution // 4)
    pair_w = 2 * resolution + 1
    out = np.full((rows * (resolution + gap) - gap, cols // 2 * (pair_w + gap) - gap, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            tile = arr[1 + r * cell: 1 + r * cell + resolution, 1 + c * cell: 1 + c * cell + resolution]
            x = c // 2 * (pair_w + gap) + c % 2 * (resolution + 1)
            y = r * (resolution + gap)
            out[y: y + resolution, x: x + resolution] = tile
    return out


def _grid(image: Path | bytes, resolution: int) -> Path | bytes | np.ndarray:
    spaced = spaced_pairs(image, resolution)
    return image if spaced is None else spaced


def section_stages(ctx: Context) -> str:
    files = ctx.run.grid_files()
    snapshots = {int(t.split("/")[1].removesuffix("px")): v for t, v in ctx.events.images.items()
                 if re.fullmatch(r"grid/\d+px", t)}
    resolutions = sorted(set(files) | set(snapshots))
    if not resolutions:
        return missing(f"No validation grids in {ctx.run.grids} or its TensorBoard events.")
    parts = ['<p class="lead">The EMA generator on the fixed validation codes at the end of each stage: '
             'in every pair, <b>generated</b> (left) next to its <b>target</b> thumbnail (right).</p>']
    for res in resolutions:
        ordered = sorted(files.get(res, []), key=lambda f: -1 if f[0] is None else f[0])
        latest = next((p for s, p in ordered if s is None), ordered[-1][1] if ordered else None)
        plain = ctx.run.grid(res)
        parts.append(f'<h3>{res} × {res} px</h3>')
        if latest is not None:
            grid = ctx.assets.img(plain.name, _grid(latest, res), f"{res} px validation grid", 600)
            parts.append(f'<div class="img">{grid}</div>')
        history = [(s, p) for s, p in ordered if s is not None] or snapshots.get(res, [])
        if len(history) > SNAPSHOTS:
            idx = np.linspace(0, len(history) - 1, SNAPSHOTS).round().astype(int)
            history = [history[i] for i in idx]
        if history:
            width = min(1100 // len(history) - 12, 300)
            cells = "".join(f'<figure>{ctx.assets.img(f"{plain.stem}_step{s}{plain.suffix}", _grid(img, res), f"step {s}", width=width)}'
                            f'<figcaption>step {s}</figcaption></figure>' for s, img in history)
            parts.append(f'<p class="small">Over training:</p><div class="strip">{cells}</div>')
    return "".join(parts)


def section_samples(ctx: Context) -> str:
    folder = ctx.inputs.samples
    if folder is None or not folder.is_dir():
        commands = "".join(f"<li><code>{esc(cmd)}</code></li>" for _, _, _, cmd in SAMPLE_FILES.values())
        where = f"No samples folder at {folder}." if folder else "No samples folder (pass --samples)."
        return f'<p class="missing">{esc(where)} Make the grids with:</p><ul class="small">{commands}</ul>'
    parts = []
    for filename, (sid, title, lead, command) in SAMPLE_FILES.items():
        parts.append(f'<h3 id="{sid}">{esc(title)}</h3>')
        path = folder / filename
        if not path.is_file():
            parts.append(missing(f"No {filename} in {folder}.", command))
            continue
        parts.append(f'<p class="lead">{esc(lead)}</p><div class="img">{ctx.assets.img(filename, path, title)}</div>')
        if filename == Samples.PROMPTS:
            parts.append(clip_table(ctx))
    return "".join(parts)


def clip_table(ctx: Context) -> str:
    """Each prompt's CLIP score and its margin over the mean mismatched score."""
    ev = ctx.evaluation
    scores = {k.split("/", 1)[1]: v for k, v in (ev or {}).items()
              if k.startswith("clip_score/") and k not in ("clip_score/matched", "clip_score/mismatched")}
    if not scores:
        return missing(f"No CLIP scores in {ctx.run.eval.name}.",
                       "raydino eval --run RUN --pyramids HELD_OUT --prompt TEXT")
    other = ev.get("clip_score/mismatched")
    rows = [[f'<span class="prompt">“{esc(p)}”</span>', fmt(v)]
            + ([f'<span class="{"up" if v > other else "down"}">{v - other:+.4g}</span>'] if other is not None else [])
            for p, v in scores.items()]
    summary = ""
    if "clip_score/matched" in ev:
        summary = (f'<p class="small">Mean CLIP score with the own prompt <b>{fmt(ev["clip_score/matched"])}</b>'
                   + (f', with the other prompts <b>{fmt(ev["clip_score/mismatched"])}</b>'
                      if "clip_score/mismatched" in ev else "") + ".</p>")
    header = ["prompt", "CLIP score"] + (["minus mismatched mean"] if other is not None else [])
    return table(header, rows) + summary


def pyramid_rows(pyramid_dir: Path, count: int) -> tuple[dict, list[int]]:
    """The first ``count`` rows (by id) of a pyramid: tokens of every level, thumbnails, source paths."""
    manifest = schema.read_manifest(pyramid_dir)
    levels = [int(s) for s in manifest["levels"]]
    names = set(pq.read_schema(schema.shard_files(pyramid_dir)[0]).names)
    wanted = [schema.tokens_col(s) for s in levels] + [c for c in (schema.THUMB, schema.PATH) if c in names]
    return schema.read_first_rows(pyramid_dir, wanted, count), levels


def pca_rgb(tokens: np.ndarray) -> np.ndarray:
    """``[n, g*g, d]`` patch tokens -> ``[n, g, g, 3]`` in [0, 1]: the first three principal components.

    The PCA is fitted on all ``n`` images' tokens together, so one colour
    means one direction in feature space across the images.
    """
    n, t, d = tokens.shape
    g = math.isqrt(t)
    x = tokens.reshape(n * t, d).astype(np.float64)
    x -= x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = x @ vt[:3].T
    comps *= np.where(np.abs(comps.max(0)) >= np.abs(comps.min(0)), 1.0, -1.0)  # a fixed sign per component
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = comps.min(0), comps.max(0)
    comps = (comps - lo) / np.where(hi > lo, hi - lo, 1.0)
    return comps.reshape(n, g, g, 3)


def _source_image(row_path: str | None, thumb: np.ndarray | None, size: int) -> np.ndarray | None:
    """The source image as extraction cropped it when it is a file here, else the stored thumbnail.

    A source on remote storage is not fetched: one picture of the page is not
    worth a network read, and the thumbnail shows the same image.
    """
    if row_path and Path(str(row_path).removeprefix("file://")).is_file():
        try:
            return read_image(row_path, size)
        except ValueError:
            pass
    if thumb is None:
        return None
    return np.asarray(Image.fromarray(thumb).resize((size, size), Image.BICUBIC))


def section_pyramid(ctx: Context) -> str:
    pyr = ctx.inputs.pyramids
    if pyr is None or not schema.manifest_path(pyr).is_file():
        return missing(f"No pyramid found ({pyr or 'none given; pass --pyramids'}).",
                       "raydino pyramids --images DIR --out PYRAMIDS")
    rows, levels = pyramid_rows(pyr, PCA_IMAGES)
    n = len(rows[schema.tokens_col(levels[0])])
    cells = ['<div class="rowlabel">image</div>']
    for i in range(n):
        img = _source_image(rows[schema.PATH][i] if schema.PATH in rows else None,
                            rows[schema.THUMB][i] if schema.THUMB in rows else None, PCA_CELL)
        cells.append(ctx.assets.img(f"pyramid_image_{i}.png", img, f"image {i + 1}") if img is not None
                     else '<div class="empty">no image</div>')
    for li, size in enumerate(levels):
        rgb = pca_rgb(rows[schema.tokens_col(size)].astype(np.float32))
        g = rgb.shape[1]
        role = " · the coarse code" if li == 0 else ""
        cells.append(f'<div class="rowlabel">{size} px input<br><span>{g}×{g} tokens{role}</span></div>')
        for i in range(n):
            up = np.kron((rgb[i] * 255).round().astype(np.uint8), np.ones((PCA_CELL // g, PCA_CELL // g, 1), np.uint8))
            cells.append(ctx.assets.img(f"pyramid_{size}_{i}.png", up, f"PCA of level {size}, image {i + 1}"))
    grid = (f'<div class="pca" style="grid-template-columns:130px repeat({n},{PCA_CELL}px)">'
            f'{"".join(cells)}</div>')
    lead = ('What the generator is trained to match: each level\'s DINOv2 patch tokens, projected on their first '
            'three principal components (fitted per level across these images) and shown as RGB. The same colour '
            'means similar features; the coarsest level is the code the generator starts from.')
    return f'<p class="lead">{esc(lead)}</p>{grid}<p class="small">From <code>{esc(pyr)}</code>.</p>'
